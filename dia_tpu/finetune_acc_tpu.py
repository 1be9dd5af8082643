"""The Accelerate entry point.

    accelerate launch dia_tpu/finetune_acc_tpu.py --config configs/demo.yaml train.max_steps=50
    accelerate launch -m dia_tpu.finetune_acc_tpu --config configs/dia-1.6b.yaml --resume auto

`dia-tpu train` runs this same main() in one process.
"""

from __future__ import annotations

import argparse
import logging

from dia_tpu.config import load
from dia_tpu.console import quiet_libraries, run_command


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="finetune_acc_tpu", description="Fine-tune Dia with Accelerate.")
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--resume", help="'auto' (latest checkpoint in output.dir) or a checkpoint folder")
    parser.add_argument(
        "--fork",
        action="store_true",
        help="with --resume PATH older than the run's newest "
        "checkpoint: branch from it, moving the newer checkpoints aside (train.fork=true)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output.dir that holds an earlier "
        "run, deleting its checkpoints, best/, final/, logs and samples (train.overwrite=true)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=50")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    run_command("finetune_acc_tpu", lambda: run(args))


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("dia_tpu").setLevel(logging.INFO)
    from dia_tpu.training.recipe import train

    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
    overrides += ["train.fork=true"] if args.fork else []
    overrides += ["train.overwrite=true"] if args.overwrite else []
    train(load(args.config, overrides))


if __name__ == "__main__":
    main()
