#!/usr/bin/env python3
"""Print how much of one training epoch's audio is padding, without and with data.buckets.

    python scripts/padding_report.py --config configs/demo.yaml data.dataset=/tmp/demo_codes \
        "data.buckets=[64, 128, 192, 256]"

Reads only the prepared dataset's frame counts (see `dia_tpu.data.batching.padding_report`); nothing is trained.
"""

from __future__ import annotations

import argparse

from dia_tpu.config import load
from dia_tpu.data.batching import padding_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (data.* and train.batch_size are used)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help='e.g. "data.buckets=[64, 128]"')
    args = parser.parse_args(argv)
    report = padding_report(load(args.config, args.overrides))
    print(f"{report['items']} training items, batch size {report['batch_size']}, one epoch:")
    for name in ("without_buckets", "with_buckets"):
        r = report[name]
        print(
            f"  {name.replace('_', ' ')}: padding {r['padding']:.1%} of audio frames; lengths {r['lengths']}, "
            f"{r['batches']} batches, {r['items_used']} items used"
        )


if __name__ == "__main__":
    main()
