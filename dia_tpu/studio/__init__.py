"""`dia-tpu studio`: a local web app (Gradio) to try a fine-tune by ear: generate from the models it offers,
compare checkpoints of a run on the same script and seed, and watch a run's report while it trains.

Generation goes through `dia-tpu generate`'s own path (`load_for_inference`, `load_voice_prompt`,
`synthesize`), so a seed gives the same audio in both. Gradio runs every event off its UI thread, one generation
at a time; errors (a text too long for the model, a model not offered) appear in the page.

What a page or an API call may ask for is bounded: only the models named at start and the run's current ones,
only the adapters named at start (anything else is refused in words that do not tell whether such a path exists),
uploads up to --max-upload-mb, and at most --max-models models loaded at once (the least recently used goes).

Offline by construction: Gradio's analytics are turned off before it is imported, the theme names system
fonts only (the default theme would fetch Google Fonts), and the page's own assets come from the local server.
"""

import os

# Gradio reads this when imported: no usage reports, no version check against its servers.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dia_tpu.studio.app import build_app, serve  # noqa: E402  (after the variable Gradio reads)
from dia_tpu.studio.models import Models, Offer, evaluation_figures, run_models, speak  # noqa: E402

__all__ = ["Models", "Offer", "build_app", "evaluation_figures", "run_models", "serve", "speak"]
