"""Print the numbers tests/test_canary.py pins, as the literals to paste into it after a deliberate change (a new
transformers or torch release that computes Dia differently, or a change to the canary's model or batch).

    python scripts/canary_values.py                          # the values, and how they compare with the pinned
    python scripts/canary_values.py --attention-scale 1.001  # a negative control's, to see how far they miss
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention-scale", type=float, default=1.0, help="multiplies every attention's scale")
    parser.add_argument("--learning-rate", type=float, default=None, help="the training steps' (default: the test's)")
    args = parser.parse_args()
    # The canary's model, batch and steps live with the test; dia_tpu from this clone where it is not installed.
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    import accelerate
    import torch
    import transformers
    from test_canary import LEARNING_RATE, canary_values, misses

    checksum, losses = canary_values(args.attention_scale, args.learning_rate or LEARNING_RATE)
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
    print("LOGITS = {")
    for key, value in checksum.items():
        print(f"    {key!r}: {value!r},")
    print("}")
    print(f"LOSSES = {losses!r}")
    print("# against the pinned values:", "; ".join(misses(checksum, losses)) or "all within RTOL")


if __name__ == "__main__":
    main()
