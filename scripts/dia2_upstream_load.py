"""Check that a Dia2 export of dia_tpu loads and speaks with upstream's own runtime.

    python scripts/dia2_upstream_load.py --upstream PATH/TO/nari-labs/dia2 --model EXPORT [--out x.wav]

Run it in an environment where upstream imports (torch, transformers, safetensors, sphn, soundfile); upstream's
code runs from its checkout and is never copied into dia_tpu. The export is loaded as upstream documents a local
model (`Dia2.from_local` with its config, weights and tokenizer, and its Mimi when it holds one) and one script is
generated with upstream's defaults on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of github.com/nari-labs/dia2")
    parser.add_argument("--model", type=Path, required=True, help="a dia_tpu Dia2 export (a run's final/)")
    parser.add_argument("--text", default="[S1] hello there")
    parser.add_argument("--out", type=Path, default=Path("upstream.wav"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.upstream))
    from dia2 import Dia2

    folder = args.model
    mimi = str(folder / "mimi") if (folder / "mimi").is_dir() else None
    dia = Dia2.from_local(
        folder / "config.json",
        folder / "model.safetensors",
        device="cpu",
        dtype="float32",
        tokenizer_id=str(folder),
        mimi_id=mimi,
    )
    result = dia.generate(args.text, output_wav=str(args.out))
    print(f"upstream loaded {folder} and wrote {args.out} ({result.waveform.shape[-1]} samples)")


if __name__ == "__main__":
    main()
