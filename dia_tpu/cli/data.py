"""The data subcommands: `prepare`, `transcribe` and `check`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dia_tpu.config import SOURCE_KINDS
from dia_tpu.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to `dia-tpu`."""
    p = sub.add_parser(
        "prepare",
        help="encode audio + transcripts into a codes dataset (resumable; "
        "`accelerate launch -m dia_tpu prepare ...` splits it across processes)",
    )
    p.add_argument("--config", required=True, help="YAML config: the model (its codec), prepare.* and data.* are used")
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


def _prepare(args: argparse.Namespace) -> None:
    from dia_tpu.config import load
    from dia_tpu.data.prepare import prepare
    from dia_tpu.families import family_of

    overrides = [*args.overrides, *([f"prepare.kind={args.kind}"] if args.kind else [])]
    cfg = load(args.config, overrides)
    coder = family_of(cfg.model).coder(cfg)
    prepare(cfg, args.input or cfg.data.source, args.output or cfg.data.dataset, args.strict or None, coder)


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
    from dia_tpu.families import family_of

    if args.config is None:
        _check_folder(args.items)
        return
    cfg = load(args.config, args.items)
    items, findings = family_of(cfg.model).check(cfg, args.min_speaker_seconds)
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
