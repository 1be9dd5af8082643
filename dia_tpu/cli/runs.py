"""The subcommands about a training run and what it makes: `train`, `export`, `push`, `report`, `plan` and
`bench`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dia_tpu import finetune_acc_tpu
from dia_tpu.config import DECODINGS, PRECISIONS


def add(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to `dia-tpu`."""
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


def _export(args: argparse.Namespace) -> None:
    from dia_tpu.families import family_of_folder

    export_checkpoint = family_of_folder(args.checkpoint).export_checkpoint
    print(f"exported to {export_checkpoint(args.checkpoint, args.out, args.form, args.native_schema)}")


def _push(args: argparse.Namespace) -> None:
    from dia_tpu.publish import push_export, upload_folder

    if args.dry_run:
        folder = upload_folder(args.model, args.dry_run, args.repo, args.adapter, args.license, args.native)
        print(f"wrote {folder} (README.md is the model card); nothing was uploaded")
        return
    url = push_export(args.model, args.repo, args.private, args.adapter, args.license, args.native)
    print(f"pushed {args.model} to {url}")


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
