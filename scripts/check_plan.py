"""Compare `dia-tpu plan`'s estimate with the measured peak memory of real training steps.

    .venv/bin/python scripts/check_plan.py [--steps 4] [--cases demo,bench-bf16] [--no-warm-up] [--markdown]

Each case (a config, overrides, a process count) runs `--steps` real optimizer steps (`build_trainable`,
`make_optimizer`, Accelerate's `prepare`, `train_step`, all of `dia_tpu.training.step`) on synthetic batches of the
config's shape in fresh processes: one spawned process, or for several processes `torchrun` with Accelerate
on CPU (DDP over gloo). The peak memory those steps add is compared with `plan.estimate` for the same config.
Exits 1 when an estimate is off by more than --tolerance (25 %) of its measured peak.

How the peak is measured:
- CUDA: `torch.cuda.max_memory_allocated` minus what was allocated before the model was built.
- CPU, which has no allocator statistics: the process's peak resident set (VmHWM) minus its resident set
  (VmRSS) just before the model is built. The kernel's high-water mark is reset at that point by writing
  5 to /proc/self/clear_refs, so the peak is that of the training steps alone. Two things would otherwise
  blur what the estimate models (memory held by tensors at the same moment):
  - glibc keeps freed memory: after the first large frees it raises its mmap threshold, and later large
    tensors come from the heap, whose freed pages stay resident. `mallopt(M_MMAP_THRESHOLD, 64 KiB)` fixes
    the threshold, so a tensor of 64 KiB or more is its own mapping and leaves the process when freed.
  - A process's first steps pay costs that belong to no tensor: kernel code paged in from libtorch,
    oneDNN's kernels generated for each new matrix shape (bf16 especially) and its thread pools, lazily
    imported modules (peft, bitsandbytes, transformers' model code). One step of a one-layer copy of the
    case's model (same batch shape, precision, checkpointing, optimizer, adapters) runs before the baseline
    is taken, and is freed. `--no-warm-up` leaves it out, to show what it accounts for.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, config, overrides, processes). Each variant changes one part of the estimate. The demo config's
# precision is `auto`, which a plan takes for bf16 and a CPU may run in fp32: its cases say which they measure.
FP32 = "train.mixed_precision=no"
CASES = [
    ("demo", "configs/demo.yaml", [FP32], 1),
    ("demo-bf16", "configs/demo.yaml", ["train.mixed_precision=bf16"], 1),
    ("demo-ckpt", "configs/demo.yaml", [FP32, "model.gradient_checkpointing=true"], 1),
    ("demo-8bit", "configs/demo.yaml", [FP32, "train.optimizer=adamw_8bit"], 1),
    ("demo-lora8", "configs/demo.yaml", [FP32, "model.lora.rank=8"], 1),
    ("bench", "configs/bench.yaml", [], 1),
    ("bench-bf16", "configs/bench.yaml", ["train.mixed_precision=bf16"], 1),
    ("bench-ckpt", "configs/bench.yaml", ["model.gradient_checkpointing=true"], 1),
    ("bench-8bit", "configs/bench.yaml", ["train.optimizer=adamw_8bit"], 1),
    ("bench-lora8", "configs/bench.yaml", ["model.lora.rank=8"], 1),
    ("bench-bf16-ckpt", "configs/bench.yaml", ["train.mixed_precision=bf16", "model.gradient_checkpointing=true"], 1),
    (
        "bench-bf16-ckpt-lora8",
        "configs/bench.yaml",
        ["train.mixed_precision=bf16", "model.gradient_checkpointing=true", "model.lora.rank=8"],
        1,
    ),
    ("bench-accum2", "configs/bench.yaml", ["train.gradient_accumulation_steps=2"], 1),
    (
        "bench-bf16-ckpt-accum2",
        "configs/bench.yaml",
        ["train.mixed_precision=bf16", "model.gradient_checkpointing=true", "train.gradient_accumulation_steps=2"],
        1,
    ),
    ("bench-ddp2", "configs/bench.yaml", [], 2),  # two CPU processes (DDP over gloo), on any machine
    ("bench-fsdp2", "configs/bench.yaml", ["train.sharding=fsdp"], 2),  # two CPU processes, FSDP2 over gloo
    (
        "bench-bf16-ckpt-fsdp2",
        "configs/bench.yaml",
        ["train.sharding=fsdp", "train.mixed_precision=bf16", "model.gradient_checkpointing=true"],
        2,
    ),
]
# Dia-1.6B's architecture, randomly initialised, at its config's training shape: only with --cases, on a GPU
# with 40 GB or more.
LARGE = [
    (
        "dia-1.6b",
        "configs/dia-1.6b.yaml",
        ["model.pretrained=null", "model.architecture={delay_pattern: [0, 8, 9, 10, 11, 12, 13, 14, 15]}"],
        1,
    ),
    (
        "dia-1.6b-8bit",
        "configs/dia-1.6b.yaml",
        [
            "model.pretrained=null",
            "model.architecture={delay_pattern: [0, 8, 9, 10, 11, 12, 13, 14, 15]}",
            "train.optimizer=adamw_8bit",
        ],
        1,
    ),
]
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per case")
    parser.add_argument(
        "--cases",
        help="comma-separated case names (default: all but the large ones): " + ", ".join(c[0] for c in CASES + LARGE),
    )
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="take the baseline before any training step has run in the process",
    )
    parser.add_argument("--tolerance", type=float, default=0.25, help="allowed |estimate / measured - 1|")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    # One case in each process torchrun starts, writing its result to a file in --worker-out.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.worker_out, args.steps, args.warm_up)
        return

    from dia_tpu.plan import estimate

    names = args.cases.split(",") if args.cases else [case[0] for case in CASES]
    unknown = sorted(set(names) - {case[0] for case in CASES + LARGE})
    if unknown:
        parser.error(f"unknown cases {unknown}")
    rows = []
    for name in names:
        cfg, processes = _case(name)
        measured = _run(name, cfg, processes, args.steps, args.warm_up)
        plan = estimate(cfg, processes=processes, device=measured["device"])
        rows.append((name, plan, measured))
        print(
            f"{name}: estimate {_estimate(plan) / MIB:.1f} MiB, measured {measured['peak'] / MIB:.1f} MiB "
            f"({measured['device']}), ratio {_estimate(plan) / measured['peak']:.2f}",
            flush=True,
        )
    print()
    print(_table(rows, args.markdown))
    off = [name for name, plan, measured in rows if abs(_estimate(plan) / measured["peak"] - 1) > args.tolerance]
    if off:
        print(f"\nestimate off by more than {args.tolerance:.0%}: {', '.join(off)}")
        sys.exit(1)


def _estimate(plan) -> int:
    """The total the case is compared with: sharded per device when its config shards over several processes."""
    return plan.fsdp_total if plan.sharding == "fsdp" and plan.processes > 1 else plan.total


def _case(name: str):
    from dia_tpu.config import load

    _, path, overrides, processes = next(case for case in CASES + LARGE if case[0] == name)
    return load(ROOT / path, overrides), processes


def _run(name: str, cfg, processes: int, steps: int, warm_up: bool) -> dict:
    """Measure one case in fresh processes; with several, the largest peak among them."""
    if processes == 1:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure, cfg, steps, warm_up).result()
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            __file__,
            f"--worker={name}",
            f"--worker-out={out}",
            f"--steps={steps}",
        ]
        command += [] if warm_up else ["--no-warm-up"]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        results = [json.loads(path.read_text()) for path in sorted(Path(out).glob("rank*.json"))]
    if done.returncode or len(results) != processes:
        raise RuntimeError(f"{name}: torchrun exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return max(results, key=lambda r: r["peak"])


def _worker(name: str, out: str, steps: int, warm_up: bool) -> None:
    cfg, _ = _case(name)
    result = measure(cfg, steps, warm_up)
    (Path(out) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))


def measure(cfg, steps: int, warm_up: bool) -> dict:
    """Peak memory that building the model and `steps` optimizer steps add to this (fresh) process."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import send_to_device, set_seed

    from dia_tpu.data.batching import synthetic_batch
    from dia_tpu.families.dia.loss import DiaScorer, codebook_weights
    from dia_tpu.model.build import architecture_config
    from dia_tpu.training.sharding import Sharding

    t = cfg.train
    sharding = Sharding.before_accelerator(cfg)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        fsdp_plugin=sharding.plugin,
    )
    sharding.engage(accelerator)
    on_cuda = accelerator.device.type == "cuda"
    set_seed(t.seed)
    config = architecture_config(cfg.model)
    batch = send_to_device(synthetic_batch(cfg, config), accelerator.device)
    weights = DiaScorer(codebook_weights(t.codebook_weights, len(config.delay_pattern))).to(accelerator.device)
    if warm_up:
        _steps(accelerator, _one_layer(cfg), 1, batch, weights, sharding)
    accelerator.free_memory()
    gc.collect()
    libc.malloc_trim(0)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    _steps(accelerator, cfg, steps, batch, weights, sharding)
    peak = torch.cuda.max_memory_allocated() if on_cuda else _status("VmHWM")
    return {"device": accelerator.device.type, "peak": peak - baseline, "baseline": baseline}


def _steps(accelerator, cfg, steps: int, batch: dict, weights, sharding) -> None:
    """Build, prepare and train `steps` optimizer steps of `gradient_accumulation_steps` micro-batches."""
    from dia_tpu.training.runtime import Runtime
    from dia_tpu.training.step import build_trainable, make_optimizer, train_step

    runtime = Runtime.of(accelerator, cfg)
    model = build_trainable(cfg, runtime)
    optimizer = make_optimizer(cfg.train, model, runtime)
    sharding.before_prepare(cfg, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    for _ in range(steps):
        micro_batches = [batch] * cfg.train.gradient_accumulation_steps
        train_step(accelerator, model, optimizer, None, micro_batches, weights, cfg.train.max_grad_norm)
    accelerator.free_memory()


def _one_layer(cfg):
    """`cfg` with one encoder and one decoder layer: the same kernels at the same shapes, less memory."""
    small = copy.deepcopy(cfg)
    arch = small.model.architecture
    for part in ("encoder_config", "decoder_config"):
        arch[part] = {**arch.get(part, {}), "num_hidden_layers": 1}
    small.model.freeze.decoder_layers = min(small.model.freeze.decoder_layers, 1)
    return small


def _status(key: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key} (Linux only)")


def _table(rows: list, markdown: bool) -> str:
    header = (
        "case",
        "params",
        "trainable",
        "weights",
        "grads",
        "optim",
        "activ",
        "fwd+bwd",
        "update",
        "ddp",
        "gathered",
        "estimate",
        "measured",
        "est/meas",
    )
    lines = [header]
    for name, p, m in rows:
        mib = (
            p.weights,
            p.gradients,
            p.optimizer_state,
            p.activations,
            p.backward_peak,
            p.update_peak,
            p.ddp_buckets,
            p.gathered,
            _estimate(p),
            m["peak"],
        )
        lines.append(
            (
                name,
                f"{p.params / 1e6:.2f} M",
                f"{p.trainable / 1e6:.2f} M",
                *(f"{v / MIB:.1f}" for v in mib),
                f"{_estimate(p) / m['peak']:.2f}",
            )
        )
    if markdown:
        out = ["| " + " | ".join(row) + " |" for row in lines]
        out.insert(1, "|---|" + "---:|" * (len(header) - 1))
        return "\n".join(out)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in lines)


if __name__ == "__main__":
    main()
