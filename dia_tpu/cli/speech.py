"""The subcommands that make speech: `generate`, `evaluate` and the `studio`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dia_tpu.config import DECODINGS, SAMPLING, described
from dia_tpu.errors import UserError


def add(sub: argparse._SubParsersAction, argv: list[str] = ()) -> None:
    """Add this module's subcommands to `dia-tpu`; `generate --model M --help` shows M's sampling defaults."""
    p = sub.add_parser("studio", help="a local web app: generate, compare checkpoints, watch a run")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="repeatable: a model to offer (export, checkpoint, "
        "best/, native .pth or hub id); the studio serves "
        "only these and the run's",
    )
    p.add_argument(
        "--run",
        help="a run folder: its checkpoints, best/ and final/ to pick from (as they are at each "
        "request), and its report",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default: this machine only; 0.0.0.0 opens it to your network, with no login)",
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--share",
        action="store_true",
        help="also a public gradio.live link: anyone with it can use your machine's model and GPU",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--adapter", action="append", default=[], help="repeatable: a LoRA adapter folder to offer")
    p.add_argument(
        "--max-models",
        type=int,
        default=2,
        help="models kept loaded at once; loading another drops the least recently used (default: 2)",
    )
    p.add_argument("--max-upload-mb", type=int, default=20, help="largest file a page may upload, in MiB (default: 20)")
    p.set_defaults(func=_studio)

    p = sub.add_parser("generate", help="synthesize speech from text")
    p.add_argument(
        "--model",
        required=True,
        help="export folder, checkpoint folder, native .pth (or folder), hub id, or a Dia2 folder (upstream's format)",
    )
    p.add_argument("--adapter", help="a LoRA adapter folder (peft format) to apply to --model")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help='one script, e.g. "[S1] Hello. [S2] Hi!"')
    text.add_argument("--text-file", help="one script per line; writes OUT/line_0001.wav, ...")
    p.add_argument("--out", required=True, help="wav file (with --text) or folder (with --text-file)")
    p.add_argument("--audio-prompt", help="voice cloning: audio to continue (any rate; resampled)")
    p.add_argument("--prompt-transcript", help="what is said in --audio-prompt, with [S1]/[S2] tags")
    _generation_flags(p, "line i of --text-file uses seed + i", _help_defaults(argv))
    dia2 = p.add_argument_group("Dia2", "sampling of Dia2's text stream and guidance (upstream's defaults)")
    dia2.add_argument("--text-temperature", type=float, help="the action (new word or pad): 0.6; 0 is argmax")
    dia2.add_argument("--text-top-k", type=int, help="50")
    dia2.add_argument("--guidance-top-k", type=int, help="guidance keeps the conditional logits among its top k: 50")
    dia2.add_argument(
        "--prefix-speaker-1",
        help="voice prefix: a recording of speaker 1, with its words' times in the .json beside it (README)",
    )
    dia2.add_argument("--prefix-speaker-2", help="voice prefix: a recording of speaker 2 (after speaker 1's)")
    dia2.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a tokenizer that ships its own Python code run it (read it first)",
    )
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "evaluate",
        help="generate the same prompts with one or more models and judge the audio: "
        "length and ending, degeneration, WER, speaker similarity",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="repeatable: export or checkpoint folder, native checkpoint or hub id; a column each",
    )
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--prompts",
        help="one script per line, or .jsonl with text and optionally id, reference "
        "(audio), audio + transcript (a voice prompt)",
    )
    given.add_argument(
        "--dataset",
        help="a prepared dataset: its held-out items (as the first model's run held "
        "them out), their audio as references and as voice prompts",
    )
    p.add_argument("--limit", type=int, help="evaluate the first N prompts only")
    p.add_argument("--no-clone", action="store_true", help="with --dataset: no voice prompts")
    p.add_argument("--out", required=True, help="folder for rows.jsonl, summary.json, summary.md and the wavs")
    p.add_argument(
        "--asr",
        default="pocketsphinx",
        help="pocketsphinx (offline, weak), whisper (openai/whisper-large-v3-turbo), whisper:ID_OR_DIR, or none",
    )
    p.add_argument(
        "--speaker",
        default="resemblyzer",
        help="resemblyzer (offline), xvector (microsoft/wavlm-base-plus-sv), xvector:ID_OR_DIR, or none",
    )
    p.add_argument(
        "--quality",
        default="none",
        help="none, or mos:ID_OR_DIR: a MOS predictor (an audio model with one regression output)",
    )
    p.add_argument("--language", default="en", help="the prompts' language, for Whisper (default: en)")
    _generation_flags(p, "prompt i uses seed + i")
    p.set_defaults(func=_evaluate, max_seconds=20.0)


def _help_defaults(argv: list[str]) -> str | None:
    """For `generate --model M --help`: M's sampling defaults, as one line of help; None otherwise (or when M
    cannot be read: generating says why)."""
    if "generate" not in argv or not {"-h", "--help"} & set(argv):
        return None
    model = next((a.split("=", 1)[1] for a in argv if a.startswith("--model=")), None)
    if model is None and "--model" in argv[:-1]:
        model = argv[argv.index("--model") + 1]
    if model is None or not Path(model).is_dir():
        return None
    from dia_tpu.generation.defaults import model_defaults

    try:
        family, values = model_defaults(model)
    except (ValueError, OSError):
        return None
    return f"{model} ({'Dia2' if family == 'dia2' else 'Dia'}) samples by default with {described(values)}"


def _generation_flags(p: argparse.ArgumentParser, seeds: str, model_defaults: str | None = None) -> None:
    """Sampling flags shared by generate and evaluate, so both sample alike. Not given: the model's own
    (its generation_config.json, a checkpoint's run's), then its family's published defaults, below."""
    s = SAMPLING
    if model_defaults is not None:
        p.description = model_defaults + "; a flag given wins"
    p.add_argument(
        "--guidance-scale",
        type=float,
        help=f"default: the model's own, else Dia's {s.guidance_scale}; Dia2's (cfg_scale) 2.0",
    )
    p.add_argument(
        "--temperature", type=float, help=f"audio; the model's own, else Dia's {s.temperature}; Dia2's 0.8, 0 is argmax"
    )
    p.add_argument("--top-p", type=float, help=f"Dia only: the model's own, else {s.top_p}")
    p.add_argument("--top-k", type=int, help=f"audio; the model's own, else Dia's {s.top_k}; Dia2's 50")
    p.add_argument("--seed", type=int, default=0, help=seeds)
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="length limit (generate's default: all the model holds; evaluate's: 20)",
    )
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--decoding",
        choices=DECODINGS,
        default="dia_tpu",
        help="dia_tpu's decoding loop (default), transformers' generate, or generate with a static KV "
        "cache and a compiled step: the same codes from each; `dia-tpu bench --task generate` "
        "times them",
    )
    p.add_argument(
        "--compile",
        dest="decoding",
        action="store_const",
        const="compiled",
        help="the same as --decoding compiled: seconds to compile per batch shape, then faster steps "
        "where the bench says it pays",
    )


def _settings(args: argparse.Namespace):
    from dia_tpu.generation.synthesize import GenerationSettings

    # Sampling not given stays None: the model's own (its generation_config.json), then the family's published.
    return GenerationSettings(
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_seconds=args.max_seconds,
        greedy=args.greedy,
        decoding=args.decoding,
    )


def _studio(args: argparse.Namespace) -> None:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UserError("dia-tpu studio needs gradio: pip install 'dia-tpu[studio]'")
    from dia_tpu.studio import serve

    serve(
        args.model,
        args.run,
        args.host,
        args.port,
        args.share,
        args.device,
        args.adapter,
        args.max_models,
        args.max_upload_mb,
    )


def _generate(args: argparse.Namespace) -> None:
    from dia_tpu.generation.speak import read_scripts, write_speech

    if args.text is not None:
        texts, outputs = [args.text], [Path(args.out)]
    else:
        texts = read_scripts(args.text_file)
        outputs = [Path(args.out) / f"line_{i + 1:04d}.wav" for i in range(len(texts))]
    write_speech(
        args.model,
        texts,
        outputs,
        _settings(args),
        adapter=args.adapter,
        audio_prompt=args.audio_prompt,
        prompt_transcript=args.prompt_transcript,
        batch_size=args.batch_size,
        device=args.device,
        dia2=_dia2_sampling(args),
        dia_flags=[
            *(["--top-p"] if args.top_p is not None else []),
            *(["--decoding"] if args.decoding != "dia_tpu" else []),
        ],
        dia2_flags=_dia2_flags(args),
        trust_remote_code=args.trust_remote_code,
        prefixes=_prefixes(args),
    )


def _prefixes(args: argparse.Namespace) -> list[str]:
    if args.prefix_speaker_2 and not args.prefix_speaker_1:
        raise UserError("--prefix-speaker-2 follows --prefix-speaker-1: give speaker 1's recording too")
    return [path for path in (args.prefix_speaker_1, args.prefix_speaker_2) if path]


def _dia2_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that only Dia2 takes."""
    values = {"--text-temperature": args.text_temperature, "--text-top-k": args.text_top_k}
    values["--guidance-top-k"] = args.guidance_top_k
    values |= {"--prefix-speaker-1": args.prefix_speaker_1, "--prefix-speaker-2": args.prefix_speaker_2}
    given = [flag for flag, value in values.items() if value is not None]
    return given + (["--trust-remote-code"] if args.trust_remote_code else [])


def _dia2_sampling(args: argparse.Namespace) -> dict:
    """Dia2's sampling flags (None: not given; the model's own, then upstream's defaults; --greedy: argmax for
    both streams)."""
    # evaluate has the shared flags only: its Dia2 models sample the text stream at upstream's defaults.
    text_temperature, text_top_k = getattr(args, "text_temperature", None), getattr(args, "text_top_k", None)
    given = {
        "temperature": 0.0 if args.greedy else args.temperature,
        "top_k": args.top_k,
        "text_temperature": 0.0 if args.greedy else text_temperature,
        "text_top_k": text_top_k,
        "guidance_scale": args.guidance_scale,
        "guidance_top_k": getattr(args, "guidance_top_k", None),
        "seed": args.seed,
    }
    return given


def _evaluate(args: argparse.Namespace) -> None:
    import torch

    from dia_tpu.evaluation.prompts import dataset_prompts, read_prompts
    from dia_tpu.evaluation.run import evaluate_models
    from dia_tpu.listen.judges import Judges

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.prompts is not None:
        requests = read_prompts(args.prompts)[: args.limit]
    else:
        requests = dataset_prompts(args.dataset, args.model[0], args.limit, clone=not args.no_clone)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    judges = Judges.load(args.asr, args.speaker, args.quality, device, args.language)
    settings = _settings(args)
    evaluate_models(args.model, requests, args.out, settings, judges, args.batch_size, device, _dia2_sampling(args))
