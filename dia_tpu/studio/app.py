"""The studio's Gradio app (Generate, Compare and Run tabs) and `serve`, which checks what it is given and
serves the app until interrupted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from dia_tpu.config import SAMPLING
from dia_tpu.console import first_line
from dia_tpu.errors import UserError
from dia_tpu.studio.models import NO_ADAPTER, Models, Offer, evaluation_figures, speak, wav_bytes

DEFAULT_TEXT = "[S1] Hello, this is my fine-tuned voice. [S2] And this is the other speaker."


def build_app(models: Models, run_dir: str | None = None):
    """The Gradio Blocks app: Generate, Compare and (with a run) Run tabs."""
    import gradio as gr

    from dia_tpu.generation.defaults import model_defaults

    choices, adapters = models.offer.models(), [NO_ADAPTER, *models.offer.adapters]

    def own_defaults(model) -> dict:
        """The model's sampling defaults, for the sliders: Dia's published ones where it has none of its own or
        cannot be read (generating then says why); a Dia2 model's top p stays Dia's (Dia2 reads none)."""
        values = asdict(SAMPLING)
        try:
            values |= model_defaults(models.offer.model(model))[1]
        except (ValueError, OSError):
            pass
        return values

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
            with gr.Accordion("sampling (set to the chosen model's own defaults)", open=False):
                s = own_defaults(choices[-1]) if choices else asdict(SAMPLING)
                guidance = gr.Slider(
                    1.0, 6.0, s["guidance_scale"], step=0.1, label="guidance scale", elem_id="guidance"
                )
                temperature = gr.Slider(0.0, 2.5, s["temperature"], step=0.05, label="temperature", elem_id="temp")
                top_p = gr.Slider(0.1, 1.0, s["top_p"], step=0.01, label="top p (Dia only)", elem_id="top-p")
                top_k = gr.Slider(1, 200, s["top_k"], step=1, label="top k", elem_id="top-k")
            sliders = [guidance, temperature, top_p, top_k]
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            audio = gr.Audio(label="speech", type="numpy", interactive=False, elem_id="speech")

            def generate(model, lora, script, voice, *rest):
                # The voice prompt, sent as an upload's file data, made a file path by its own component.
                voice = prompt_audio.preprocess(gr.FileData(**voice)) if voice else None
                return wav_bytes(*speak(models, model, lora, script, voice, *rest))

            def to_defaults(model):  # the sliders in SAMPLING's order
                return [gr.update(value=value) for value in own_defaults(model).values()]

            source.change(to_defaults, source, sliders, api_visibility="private")

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
                        None,  # each model at its own defaults
                        None,
                        None,
                        None,
                        seed_value,
                        limit,
                    )[:2]
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
