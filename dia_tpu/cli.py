"""`dia-tpu`: subcommands that parse arguments and call the pipeline's functions."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dia_tpu import finetune_acc_tpu
from dia_tpu.config import DECODINGS, PRECISIONS, SAMPLING, SOURCE_KINDS
from dia_tpu.console import quiet_libraries, run_command
from dia_tpu.errors import UserError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dia-tpu", description="Fine-tune Dia text-to-speech with Accelerate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prepare",
        help="encode audio + transcripts into a codes dataset (resumable; "
        "`accelerate launch -m dia_tpu prepare ...` splits it across processes)",
    )
    p.add_argument("--config", required=True, help="YAML config: model.codec, prepare.* and data.* are used")
    p.add_argument(
        "--input",
        help="a folder with metadata.csv, a folder of audio + .txt, a Hugging Face dataset "
        "(hub id, save_to_disk folder, parquet/jsonl/csv) (default: data.source)",
    )
    p.add_argument("--output", help="dataset folder to write (default: data.dataset)")
    p.add_argument("--kind", choices=SOURCE_KINDS, help="source kind (default: prepare.kind)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "transcribe",
        help="long recordings -> segments with [S1]/[S2] transcripts and speakers, a "
        "folder prepare reads (resumable; `accelerate launch -m dia_tpu "
        "transcribe ...` shares recordings between processes)",
    )
    p.add_argument("--config", required=True, help="YAML config: transcribe.* and prepare.max_seconds are used")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        help="repeatable: an audio file, or a folder searched for audio files",
    )
    p.add_argument("--output", required=True, help="folder to write: metadata.csv, audio/, dropped.tsv, report.json")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. transcribe.asr=pocketsphinx")
    p.set_defaults(func=_transcribe)

    p = sub.add_parser(
        "check",
        help="FOLDER: what in a folder you were sent (run, checkpoint, export, dataset) "
        "dia_tpu would refuse, before anything is loaded; --config: what in a prepared "
        "dataset will train badly (clips with no end, long transcripts, tags, unseen "
        "characters, speakers with little audio)",
    )
    p.add_argument("--config", help="YAML config: data.* names the dataset and the limits")
    p.add_argument("--min-speaker-seconds", type=float, default=60.0, help="a speaker with less audio is named")
    p.add_argument(
        "items",
        nargs="*",
        metavar="FOLDER | KEY=VALUE",
        help="without --config: the folder to check; with --config: dotted overrides",
    )
    p.set_defaults(func=_check)

    p = sub.add_parser("train", help="fine-tune in this process (use `accelerate launch` for more)")
    finetune_acc_tpu.build_parser(p)
    p.set_defaults(func=finetune_acc_tpu.run)

    p = sub.add_parser(
        "export", help="turn a training checkpoint into a model folder, a LoRA adapter or a native Nari Labs checkpoint"
    )
    p.add_argument("--checkpoint", required=True, help="output.dir/checkpoints/step_N (or best)")
    p.add_argument("--out", required=True, help="folder to write")
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--merge",
        dest="form",
        action="store_const",
        const="merge",
        help="a from_pretrained-loadable model, LoRA adapters folded in (the default)",
    )
    form.add_argument(
        "--adapter",
        dest="form",
        action="store_const",
        const="adapter",
        help="the LoRA adapter alone (peft format) of a LoRA run",
    )
    form.add_argument(
        "--native",
        dest="form",
        action="store_const",
        const="native",
        help="native Nari Labs format: .pth + config.json, for their inference code and app",
    )
    p.add_argument(
        "--native-schema",
        choices=("v0.1", "0626"),
        default="v0.1",
        help="config.json schema of --native (v0.1: dia-v0_1.pth; 0626: the newer config layout)",
    )
    p.set_defaults(func=_export, form="merge")

    p = sub.add_parser("push", help="upload an export to the Hugging Face Hub with a model card")
    p.add_argument("--model", required=True, help="an export: a run's final/ or `dia-tpu export` output")
    p.add_argument("--repo", required=True, help="Hub repository id, org/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--adapter", action="store_true", help="upload the LoRA adapter alone (a LoRA run's export)")
    p.add_argument(
        "--native",
        nargs="?",
        const="v0.1",
        choices=("v0.1", "0626"),
        help="upload a native Nari Labs checkpoint instead (config.json schema, default v0.1)",
    )
    p.add_argument("--license", help="the card's license (default: the base model's; Dia's is apache-2.0)")
    p.add_argument("--dry-run", metavar="DIR", help="write the repository's files into DIR and upload nothing")
    p.set_defaults(func=_push)

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
        "--model", required=True, help="export folder, checkpoint folder, native .pth (or folder), or hub id"
    )
    p.add_argument("--adapter", help="a LoRA adapter folder (peft format) to apply to --model")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help='one script, e.g. "[S1] Hello. [S2] Hi!"')
    text.add_argument("--text-file", help="one script per line; writes OUT/line_0001.wav, ...")
    p.add_argument("--out", required=True, help="wav file (with --text) or folder (with --text-file)")
    p.add_argument("--audio-prompt", help="voice cloning: audio to continue (any rate; resampled)")
    p.add_argument("--prompt-transcript", help="what is said in --audio-prompt, with [S1]/[S2] tags")
    _generation_flags(p, "line i of --text-file uses seed + i")
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

    p = sub.add_parser("report", help="write one self-contained HTML page about a training run")
    p.add_argument("run_dir", help="output.dir of a run")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "plan",
        help="parameters and estimated memory per device of a config's training, and which GPUs and TPU chips it fits",
    )
    p.add_argument("--config", required=True, help="YAML config to plan (model, data lengths, train options)")
    p.add_argument("--processes", type=int, default=1, help="devices training together (for the FSDP line)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_plan)

    p = sub.add_parser(
        "bench",
        help="measure training throughput (audio frames/s) per mixed precision, or "
        "generation's real-time factor (--task generate)",
    )
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/bench.yaml")
    p.add_argument(
        "--task",
        choices=("train", "generate"),
        default="train",
        help="train: training steps (default); generate: speech generation, per decoding loop",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        action="append",
        help="generate: repeatable batch size (default: --batch-size 1 --batch-size 4)",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="generate: seconds of audio to ask for per item")
    p.add_argument(
        "--decoding",
        action="append",
        choices=DECODINGS,
        help="generate: repeatable decoding loop (default: all of " + ", ".join(DECODINGS) + ")",
    )
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument(
        "--precision", action="append", choices=PRECISIONS, help="repeatable (default: --precision no --precision bf16)"
    )
    p.add_argument(
        "--variant",
        action="append",
        metavar="NAME[:KEY=VALUE,...]",
        help="repeatable: a named variant of the config to measure too, e.g. "
        "'ckpt:model.gradient_checkpointing=true' or 'lora:model.lora.rank=16,model.lora.alpha=32'; "
        "a bare NAME is the config as given",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    quiet_libraries()
    run_command(f"dia-tpu {args.command}", lambda: args.func(args))


def _prepare(args: argparse.Namespace) -> None:
    from dia_tpu.config import load
    from dia_tpu.data.prepare import prepare

    overrides = [*args.overrides, *([f"prepare.kind={args.kind}"] if args.kind else [])]
    cfg = load(args.config, overrides)
    prepare(cfg, args.input or cfg.data.source, args.output or cfg.data.dataset, strict=args.strict or None)


def _transcribe(args: argparse.Namespace) -> None:
    from dia_tpu.config import load
    from dia_tpu.transcribe.run import transcribe

    report = transcribe(load(args.config, args.overrides), args.input, args.output)
    if report:
        dropped = ", ".join(f"{n} {reason}" for reason, n in report["dropped"].items()) or "nothing"
        print(
            f"{report['segments']} segments, {report['kept_hours']:.3f} of {report['hours']:.3f} h kept, from "
            f"{report['recordings']} recordings (real-time factor {report['real_time_factor']['total']:.3f}); "
            f"dropped: {dropped}; see {Path(args.output) / 'report.json'}"
        )


def _check(args: argparse.Namespace) -> None:
    from dia_tpu.config import load
    from dia_tpu.data.check import check_dataset

    if args.config is None:
        _check_folder(args.items)
        return
    cfg = load(args.config, args.items)
    items, findings = check_dataset(cfg, args.min_speaker_seconds)
    print(f"{cfg.data.dataset}: {items} items, {len(findings) or 'no'} finding{'s' * (len(findings) != 1)}")
    for finding in findings:
        print(f"  - {finding}")


def _check_folder(items: list[str]) -> None:
    from dia_tpu.artifacts.audit import audit

    if len(items) != 1:
        raise UserError("check: give one FOLDER to look at, or --config CONFIG to check the dataset it names")
    found = audit(items[0])
    print("\n".join(found.lines()))
    if found.refused:
        raise UserError(f"{len(found.refused)} thing(s) in {items[0]} would be refused (listed above)")
    print(f"nothing in {items[0]} would be refused")


def _export(args: argparse.Namespace) -> None:
    from dia_tpu.export import export_checkpoint

    print(f"exported to {export_checkpoint(args.checkpoint, args.out, args.form, args.native_schema)}")


def _generation_flags(p: argparse.ArgumentParser, seeds: str) -> None:
    """Sampling flags shared by generate and evaluate, so both sample alike."""
    p.add_argument("--guidance-scale", type=float, default=SAMPLING.guidance_scale)
    p.add_argument("--temperature", type=float, default=SAMPLING.temperature)
    p.add_argument("--top-p", type=float, default=SAMPLING.top_p)
    p.add_argument("--top-k", type=int, default=SAMPLING.top_k)
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


def _push(args: argparse.Namespace) -> None:
    from dia_tpu.publish import push_export, upload_folder

    if args.dry_run:
        folder = upload_folder(args.model, args.dry_run, args.repo, args.adapter, args.license, args.native)
        print(f"wrote {folder} (README.md is the model card); nothing was uploaded")
        return
    url = push_export(args.model, args.repo, args.private, args.adapter, args.license, args.native)
    print(f"pushed {args.model} to {url}")


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
    )


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
    evaluate_models(args.model, requests, args.out, _settings(args), judges, args.batch_size, device)


def _report(args: argparse.Namespace) -> None:
    from dia_tpu.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")


def _plan(args: argparse.Namespace) -> None:
    from dia_tpu.config import load
    from dia_tpu.plan import estimate, format_plan

    print(format_plan(estimate(load(args.config, args.overrides), processes=args.processes)))


def _bench(args: argparse.Namespace) -> None:
    import json

    from dia_tpu.bench.train import DEFAULT_PRECISIONS, bench, format_table
    from dia_tpu.config import load

    cfg = load(args.config, args.overrides)
    if args.task == "generate":
        from dia_tpu.bench.generate import bench_generation, format_generation_table

        results = bench_generation(
            cfg,
            args.seconds,
            args.batch_size or [1, 4],
            args.precision or ["no", "bf16"],
            args.decoding or list(DECODINGS),
            skip_slow=not args.precision,
        )
        print(format_generation_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
        return
    if args.variant:
        variants = {}
        for spec in args.variant:
            name, _, extra = spec.partition(":")
            # Split at commas that start the next KEY=, so values like [attention, mlp] stay whole.
            variants[name] = load(args.config, [*args.overrides, *[x for x in re.split(r",(?=[\w.]+=)", extra) if x]])
        cfg = variants
    results = bench(cfg, args.steps, args.warmup, args.precision or list(DEFAULT_PRECISIONS), not args.precision)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
