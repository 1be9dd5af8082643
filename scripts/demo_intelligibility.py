"""How intelligible a demo model is: each of the bundled sample's 32 transcripts generated alone (seed 0, at most
5 s), heard by the offline recogniser, and matched to the nearest of the 32 transcripts by word error rate. A
generation is identified when its nearest transcript is its own. The original recordings are judged the same
way, as the ceiling.

    python scripts/demo_intelligibility.py --model runs/demo/final [--guidance-scale 3 --temperature 1.8 ...]

Sampling not given is the model's own (its generation_config.json), as `dia-tpu generate`'s. Prints one line
per set: identified of 32, mean WER against the own transcript, and mean WER against the nearest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dia_tpu.config import PrepareConfig
from dia_tpu.data.audio import load_audio
from dia_tpu.data.sources import read_clips
from dia_tpu.evaluation.text import spoken_text, word_errors
from dia_tpu.generation.synthesize import GenerationSettings, sampling_of, synthesize, with_model_sampling
from dia_tpu.listen.asr import load_recogniser
from dia_tpu.model.load import load_for_inference

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def identification(scripts: list[str], heard: list[str], normalise) -> dict:
    """Identified count, mean WER against each one's own script and against its nearest script."""
    references = [normalise(spoken_text(s)) for s in scripts]
    own, nearest, identified = [], [], 0
    for i, text in enumerate(heard):
        rates = [word_errors(ref, normalise(text)).rate for ref in references]
        own.append(rates[i])
        nearest.append(min(rates))
        identified += int(np.argmin(rates) == i)
    return {
        "identified": identified,
        "of": len(scripts),
        "wer_own": float(np.mean(own)),
        "wer_nearest": float(np.mean(nearest)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a demo export or checkpoint")
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=5.0)
    p.add_argument("--originals", action="store_true", help="also judge the original recordings")
    p.add_argument("--out", type=Path, help="write the figures and every transcript heard as JSON here")
    args = p.parse_args()

    clips = list(read_clips(str(SAMPLE), PrepareConfig()))
    scripts = [clip.text for clip in clips]
    recogniser = load_recogniser("pocketsphinx")
    model, codec = load_for_inference(args.model)
    rate = codec.config.sampling_rate
    given = {k: getattr(args, k) for k in ("guidance_scale", "temperature", "top_p", "top_k")}
    settings = with_model_sampling(GenerationSettings(**given, seed=args.seed, max_seconds=args.max_seconds), model)
    waves = [synthesize(model, codec, [script], settings)[0] for script in scripts]
    heard = [r.text for r in recogniser.hear(waves, rate)]
    results = {"model": args.model, "sampling": sampling_of(settings)}
    results["generated"] = identification(scripts, heard, recogniser.normalise) | {"heard": heard}
    if args.originals:
        originals = [load_audio(clip.audio.path, rate) for clip in clips]
        heard_originals = [r.text for r in recogniser.hear(originals, rate)]
        results["originals"] = identification(scripts, heard_originals, recogniser.normalise)
    for name in ("generated", "originals"):
        if name in results:
            r = results[name]
            print(
                f"{name}: {r['identified']} of {r['of']} identified, WER {r['wer_own']:.3f} "
                f"(nearest {r['wer_nearest']:.3f}); sampling {results['sampling']}"
            )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
