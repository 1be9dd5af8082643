"""Compare `dia-tpu plan`'s per-device estimate with XLA's own memory report of the compiled training step, sharded
(SPMD over virtual devices of torch_xla's CPU device) and on one device.

    PJRT_DEVICE=CPU ~/.cache/dia_tpu/xla-py311-torch2.9.0-xla2.9.0/bin/python scripts/check_plan_xla.py [--markdown]

Each case trains 2 steps in a fresh process with `XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`, which
makes XLA write a memory-usage report per compiled program; under SPMD a program is what one device runs. The
largest of the step programs is the measured figure. The estimate is `plan.estimate` for the same config with
the per-device batch (train.batch_size / devices: under SPMD one process splits its batch over its devices) on
that many devices. Exits 1 when an estimate is off by more than --tolerance (25 %).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 2**20
# The tests' small Dia (tests/conftest.py TINY) and the benchmark's; the random codec of the tests.
SMALL = [
    "model.codec=null",
    "model.codec_architecture={encoder_hidden_size: 8, decoder_hidden_size: 32, sampling_rate: 44100}",
    "data.max_audio_frames=48",
]
# (name, config, overrides, devices); every batch is 4 items.
CASES = [
    ("demo-1", "configs/demo.yaml", [*SMALL, "train.batch_size=4"], 1),
    ("demo-spmd4", "configs/demo.yaml", [*SMALL, "train.batch_size=4", "eval.batch_size=4", "train.sharding=fsdp"], 4),
    ("bench-1", "configs/bench.yaml", ["train.batch_size=4"], 1),
    ("bench-spmd4", "configs/bench.yaml", ["train.batch_size=4", "eval.batch_size=4", "train.sharding=fsdp"], 4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated case names: " + ", ".join(c[0] for c in CASES))
    parser.add_argument("--tolerance", type=float, default=0.25, help="allowed |estimate / measured - 1|")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    from dia_tpu.config import load
    from dia_tpu.data.prepare import prepare
    from dia_tpu.plan import estimate

    chosen = [c for c in CASES if not args.cases or c[0] in args.cases.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        codes = Path(work) / "codes"
        prepare(load(ROOT / "configs/demo.yaml", SMALL), ROOT / "data/sample", codes)
        for name, config, overrides, devices in chosen:
            measured = _measure(Path(work) / name, config, [*overrides, f"data.dataset={codes}"], devices)
            cfg = load(ROOT / config, [*overrides, f"data.dataset={codes}"])
            cfg.train.batch_size //= devices
            plan = estimate(cfg, processes=devices, device="xla")
            rows.append((name, plan.fsdp_total if devices > 1 else plan.total, plan.gathered, measured))
            print(f"{name}: estimate {rows[-1][1] / MIB:.1f} MiB, XLA {measured / MIB:.1f} MiB", flush=True)
    lines = [("case", "estimate MiB", "of which gathered", "XLA report MiB", "est/XLA")]
    lines += [(n, f"{e / MIB:.1f}", f"{g / MIB:.1f}", f"{m / MIB:.1f}", f"{e / m:.2f}") for n, e, g, m in rows]
    if args.markdown:
        print("\n".join("| " + " | ".join(row) + " |" for row in lines[:1] + [("---",) * 5] + lines[1:]))
    else:
        print("\n".join("  ".join(cell.rjust(16) for cell in row) for row in lines))
    if any(abs(e / m - 1) > args.tolerance for _, e, _, m in rows):
        sys.exit(1)


def _measure(work: Path, config: str, overrides: list[str], devices: int) -> int:
    """The largest per-device memory of the step programs of a 2-step run with XLA's dumps on."""
    dump = work / "dump"
    env = {
        **os.environ,
        "PJRT_DEVICE": "CPU",
        "LOCAL_RANK": "0",
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
    }
    env.pop("CPU_NUM_DEVICES", None)
    if devices > 1:
        env["CPU_NUM_DEVICES"] = str(devices)
    command = [
        sys.executable,
        "-m",
        "dia_tpu.finetune_acc_tpu",
        "--config",
        str(ROOT / config),
        *overrides,
        f"output.dir={work / 'run'}",
        "train.max_steps=2",
        "train.report_to=none",
        "data.eval_size=0",
        "samples.every=0",
        "eval.eval_on_start=false",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{work.name}: exited {done.returncode}:\n{done.stderr[-3000:]}")
    reports = dump.glob("*SyncTensorsGraph*memory-usage-report.txt")
    return max(int(report.read_text().split()[3]) for report in reports)


if __name__ == "__main__":
    main()
