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

from __future__ import annotations

import os
import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia_tpu.artifacts import RunFolder, completion_mark, open_artifact
from dia_tpu.config import SAMPLING
from dia_tpu.console import first_line
from dia_tpu.errors import UserError

# Gradio reads this when imported: no usage reports, no version check against its servers.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULT_TEXT = "[S1] Hello, this is my fine-tuned voice. [S2] And this is the other speaker."
NO_ADAPTER = "none"


def refusal(kind: str, value: object) -> str:
    """The one answer to a value the studio does not offer: the same whether or not such a path exists, so the
    page cannot be used to probe the server's files."""
    flag = f"--{kind} {shlex.quote(str(value))}"
    return f'"{value}" is not one of the {kind}s this studio offers; start it with {flag} to offer it'


@dataclass(frozen=True)
class Offer:
    """What the studio serves: the models named with --model, the run's (asked again on every request, so a
    checkpoint saved while the studio runs is offered and one rotated away is not) and the adapters named with
    --adapter. Values are compared as the exact strings listed: resolving them would let a request probe paths."""

    sources: tuple[str, ...] = ()
    run_dir: str | None = None
    adapters: tuple[str, ...] = ()

    def models(self) -> list[str]:
        return [*(run_models(self.run_dir) if self.run_dir else []), *self.sources]

    def model(self, value: object) -> str:
        if value not in self.models():
            raise UserError(refusal("model", value))
        return str(value)

    def adapter(self, value: object) -> str | None:
        if value in (None, "", NO_ADAPTER):
            return None
        if value not in self.adapters:
            raise UserError(refusal("adapter", value))
        return str(value)


def load_model(source: str, adapter: str | None, device: str) -> tuple:
    """(model, codec, language tags) through `dia-tpu generate`'s own loader."""
    from dia_tpu.model.load import language_tags_of, load_for_inference

    artifact = open_artifact(source)
    model, codec = load_for_inference(artifact, device, adapter=adapter)
    return model, codec, language_tags_of(artifact)


class Models:
    """The offered models (with their codecs and language tags) by (source, adapter), at most `limit` loaded at
    once: loading another drops the least recently used first, so its memory is free for the new one."""

    def __init__(
        self, device: str, offer: Offer, limit: int = 2, load: Callable[[str, str | None, str], tuple] = load_model
    ):
        if limit < 1:
            raise UserError(f"--max-models {limit}: the studio needs at least one model loaded to generate")
        self.device, self.offer, self.limit, self.load = device, offer, limit, load
        self._loaded: OrderedDict[tuple[str, str | None], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str, adapter: str | None = None) -> tuple:
        key = (self.offer.model(source), self.offer.adapter(adapter))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
            else:
                while len(self._loaded) >= self.limit:
                    self._loaded.popitem(last=False)
                self._loaded[key] = self.load(*key, self.device)
            return self._loaded[key]

    def loaded(self) -> list[tuple[str, str | None]]:
        """The (source, adapter) pairs held, least recently used first."""
        with self._lock:
            return list(self._loaded)


def speak(
    models: Models,
    source: str,
    adapter: str | None,
    text: str,
    prompt_audio: str | None,
    prompt_transcript: str,
    guidance_scale: float,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int,
    max_seconds: float | None,
) -> tuple[int, np.ndarray]:
    """One script to (rate, wave) as `dia-tpu generate --seed SEED` writes it; ValueError/FileNotFoundError name
    what is wrong."""
    from dia_tpu.config import sampling_problems
    from dia_tpu.generation.synthesize import GenerationSettings, load_voice_prompt, synthesize

    if not source:
        raise UserError("choose a model from the list: the studio offers those named with --model and the run's")
    if not text or not text.strip():
        raise UserError("the script is empty: type what the speakers say, with [S1] and [S2]")
    model, codec, tags = models.get(source, adapter)
    settings = GenerationSettings(
        guidance_scale=guidance_scale,
        temperature=temperature,
        top_p=top_p,
        top_k=int(top_k),
        seed=int(seed),
        max_seconds=max_seconds or None,
        language_tags=tags,
    )
    if problems := sampling_problems(settings, lambda field: field.replace("_", " ")):
        raise UserError("; ".join(problems))
    prompt = None
    if prompt_audio:
        prompt = load_voice_prompt(codec, prompt_audio, prompt_transcript or "", model_config=model.config)
    (wave,) = synthesize(model, codec, [text.strip()], settings, prompt)
    # 16-bit samples as `dia-tpu generate`'s wav holds them: given floats, Gradio would rescale them to full scale.
    return codec.config.sampling_rate, np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16)


def run_models(run_dir: str | Path) -> list[str]:
    """A run's models to pick from: its kept checkpoints (oldest first), best/ and final/ when present."""
    run = RunFolder(run_dir)
    found = [str(p) for p in run.complete_checkpoints()]
    return found + [str(p) for p in (run.best, run.final) if p.is_dir()]


def evaluation_figures(source: str) -> str:
    """What the run logged about a checkpoint of it: the eval loss and the automatic evaluation's figures at
    its step (one line; empty for models outside a run)."""
    from dia_tpu.report import read_scalars

    mark = completion_mark(Path(source))  # a complete checkpoint (or best/) of a run, and its step
    if mark is None:
        return ""
    step = mark["step"]
    scalars = read_scalars(RunFolder.holding(source).logs)
    figures = [
        f"{tag} {values[step]:.3f}"
        for tag, values in sorted(scalars.items())
        if tag.startswith(("eval/loss", "audio/")) and step in values and "_cb" not in tag
    ]
    return f"step {step}: " + (", ".join(figures) if figures else "nothing logged at this step")


def build_app(models: Models, run_dir: str | None = None):
    """The Gradio Blocks app: Generate, Compare and (with a run) Run tabs."""
    import gradio as gr

    choices, adapters = models.offer.models(), [NO_ADAPTER, *models.offer.adapters]

    def guarded(work):
        """Errors the user can fix appear in the page instead of a dead page."""

        def call(*args):
            try:
                return work(*args)
            except (ValueError, FileNotFoundError, OSError) as err:
                raise gr.Error(first_line(err)) from err

        return call

    def offered_now():
        # The run's checkpoints as they are now: saved since the page was built, or rotated away.
        now = models.offer.models()
        return gr.update(choices=now), gr.update(choices=now)

    with gr.Blocks(title="dia_tpu studio", analytics_enabled=False) as app:
        gr.Markdown("# dia_tpu studio\nTry a Dia fine-tune: write a dialogue with `[S1]` and `[S2]` tags.")
        with gr.Tab("Generate"):
            with gr.Row():
                source = gr.Dropdown(
                    choices,
                    value=choices[-1] if choices else None,
                    allow_custom_value=False,
                    label="model (those named with --model, and the run's)",
                )
                adapter = gr.Dropdown(
                    adapters,
                    value=NO_ADAPTER,
                    allow_custom_value=False,
                    label="LoRA adapter (those named with --adapter)",
                )
            text = gr.Textbox(DEFAULT_TEXT, lines=3, label="script", elem_id="script")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="seed (the same as dia-tpu generate --seed)")
                max_seconds = gr.Number(None, label="max seconds (empty: all the model holds)", elem_id="max-seconds")
            with gr.Accordion("voice prompt (cloning)", open=False):
                prompt_audio = gr.Audio(type="filepath", sources=["upload", "microphone"], label="voice to continue")
                prompt_transcript = gr.Textbox(label="what is said in it, with [S1]/[S2]")
            with gr.Accordion("sampling", open=False):
                guidance = gr.Slider(1.0, 6.0, SAMPLING.guidance_scale, step=0.1, label="guidance scale")
                temperature = gr.Slider(1.0, 2.5, SAMPLING.temperature, step=0.05, label="temperature")
                top_p = gr.Slider(0.1, 1.0, SAMPLING.top_p, step=0.01, label="top p")
                top_k = gr.Slider(1, 200, SAMPLING.top_k, step=1, label="top k")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            audio = gr.Audio(label="speech", type="numpy", interactive=False, elem_id="speech")

            def generate(model, lora, script, voice, *rest):
                # The voice prompt, sent as an upload's file data, made a file path by its own component.
                voice = prompt_audio.preprocess(gr.FileData(**voice)) if voice else None
                return speak(models, model, lora, script, voice, *rest)

            # preprocess=False: the studio checks the models itself (`Offer`), against what it offers at that moment
            # and in one message; Gradio's dropdown would check them against the choices the page was given.
            go.click(
                guarded(generate),
                [
                    source,
                    adapter,
                    text,
                    prompt_audio,
                    prompt_transcript,
                    guidance,
                    temperature,
                    top_p,
                    top_k,
                    seed,
                    max_seconds,
                ],
                audio,
                concurrency_limit=1,
                api_name="generate",
                preprocess=False,
            )
        with gr.Tab("Compare"):
            picked = gr.Dropdown(
                choices,
                value=choices[-2:],
                multiselect=True,
                allow_custom_value=False,
                max_choices=4,
                label="two to four models",
            )
            compare_text = gr.Textbox(DEFAULT_TEXT, lines=2, label="script")
            with gr.Row():
                compare_seed = gr.Number(0, precision=0, label="seed")
                compare_seconds = gr.Number(None, label="max seconds (empty: all the model holds)")
            compare_go = gr.Button("Compare", variant="primary")
            players, notes = [], []
            with gr.Row():
                for i in range(4):
                    with gr.Column():
                        players.append(gr.Audio(label=f"model {i + 1}", type="numpy", interactive=False))
                        notes.append(gr.Markdown())

            def compare(chosen, script, seed_value, limit):
                chosen = list(chosen or [])
                if not 2 <= len(chosen) <= 4:
                    raise UserError(f"pick two to four models to compare, not {len(chosen)}")
                # Every model is checked as offered (in speak) before evaluation_figures reads its folder.
                sound = [
                    speak(
                        models,
                        m,
                        None,
                        script,
                        None,
                        "",
                        SAMPLING.guidance_scale,
                        SAMPLING.temperature,
                        SAMPLING.top_p,
                        SAMPLING.top_k,
                        seed_value,
                        limit,
                    )
                    for m in chosen
                ]
                labels = [gr.Audio(value=s, label=Path(m).name or m) for s, m in zip(sound, chosen, strict=True)]
                texts = [f"**{Path(m).name or m}**  \n{evaluation_figures(m)}" for m in chosen]
                empty = 4 - len(chosen)
                return [*labels, *[gr.Audio(value=None, label="-")] * empty, *texts, *[""] * empty]

            compare_go.click(
                guarded(compare),
                [picked, compare_text, compare_seed, compare_seconds],
                [*players, *notes],
                concurrency_limit=1,
                api_name="compare",
                preprocess=False,
            )
        if run_dir is not None:
            with gr.Tab("Run"):
                from dia_tpu.report import render

                def page() -> str:
                    # The report's own page, in a frame so its styles stay its own.
                    from html import escape

                    return f'<iframe style="width:100%;height:80vh;border:0" srcdoc="{escape(render(Path(run_dir)))}">'

                report = gr.HTML(page)
                timer = gr.Timer(30)
                timer.tick(page, None, report)
                timer.tick(offered_now, None, [source, picked], api_visibility="private")
        app.load(offered_now, None, [source, picked], api_visibility="private")
    return app


def serve(
    sources: list[str],
    run_dir: str | None,
    host: str,
    port: int,
    share: bool,
    device: str | None,
    adapters: Sequence[str] = (),
    max_models: int = 2,
    max_upload_mb: int = 20,
) -> None:
    """`dia-tpu studio`: build the app and serve it until interrupted."""
    import torch

    if not sources and run_dir is None:
        raise UserError("the studio offers only the models it is started with: give --model, --run or both")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise FileNotFoundError(f"--run {run_dir}: no such run folder")
    if missing := [a for a in adapters if not Path(a).is_dir()]:
        raise FileNotFoundError(f"--adapter {missing[0]}: no such adapter folder")
    if max_upload_mb < 1:
        raise UserError(f"--max-upload-mb {max_upload_mb}: allow at least 1 MiB, or no voice prompt fits")
    offer = Offer(tuple(sources), run_dir, tuple(adapters))
    models = Models(device or ("cuda" if torch.cuda.is_available() else "cpu"), offer, max_models)
    app = build_app(models, run_dir)
    where = "shared through a public gradio.live link" if share else f"on http://{host}:{port}"
    print(f"dia_tpu studio {where}; Ctrl-C stops it", flush=True)
    try:
        # Gradio refuses a larger upload while it streams in, with HTTP 413, before anything reaches the studio.
        app.queue().launch(
            server_name=host,
            server_port=port,
            share=share,
            inbrowser=False,
            show_error=True,
            quiet=True,
            theme=offline_theme(),
            ssr_mode=False,
            footer_links=[],
            max_file_size=max_upload_mb * 1024 * 1024,
        )
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise UserError(f"cannot serve on {host}:{port} ({first_line(err)}); give another --port") from err


def offline_theme():
    """Gradio's default look with system fonts: its own theme asks Google Fonts for them."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
