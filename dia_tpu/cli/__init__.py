"""`dia-tpu`: subcommands that parse arguments and call the pipeline's functions, a module per group:
`data` (prepare, transcribe, check), `runs` (train, export, push, report, plan, bench) and `speech` (studio,
generate, evaluate)."""

from __future__ import annotations

import argparse
import sys

from dia_tpu.cli import data, runs, speech
from dia_tpu.console import quiet_libraries, run_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dia-tpu", description="Fine-tune Dia text-to-speech with Accelerate.")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add(sub)
    runs.add(sub)
    speech.add(sub, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    quiet_libraries()
    run_command(f"dia-tpu {args.command}", lambda: args.func(args))
