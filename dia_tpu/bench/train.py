"""`dia-tpu bench` (training): throughput of a config's model, in audio frames per second, per mixed precision,
and how close the step comes to what the device's matrix units can do.

The model is the config's (random or pretrained, of either family); the data is one synthetic batch of the
config's fixed shape (full `max_audio_frames`-long clips; Dia's with `max_text_tokens - 10` text tokens, Dia2's
with a word every 6 frames), so no dataset or codec is needed and the numbers measure the training step alone:
forward, the family's loss, backward, clipping, AdamW.

Two limits are measured in the same process (`limits`), on the same device and threads:
- the rate of a square MATMUL_SIZE matmul in the precision's dtype (fp32, or bf16 / fp16 under autocast). The
  step's FLOPs are counted once, on the first untimed step, by torch's `FlopCounterMode` (matrix products and
  attention, forward and backward, where torch has a formula for the attention kernel: eager attention and the
  CUDA kernels, not CPU flash attention; elementwise work, the loss's softmax and the optimizer are not counted,
  so the share of the limit is a lower bound of how busy the matrix units are). Achieved FLOP/s over the matmul
  rate then compares across machines.
- the time of the step's own matrix products alone: recorded on that same first step and replayed at their
  shapes. Small models' products run far below the square matmul's rate (on AMX CPUs and big GPUs above all),
  so this is the floor the step itself could reach; the rest of the step is everything else it does.

Each precision runs in a fresh spawned process rather than in this one, for three reasons:
- Accelerate keeps one process-wide state whose mixed precision cannot change once set; resetting it takes
  private calls (`AcceleratorState._reset_state`) that the library says not to use.
- Peak resident memory (`ru_maxrss`) can only grow within a process, so a second precision measured in the
  same process would report the first one's peak.
- Every precision starts alike: no allocator, kernel or compilation caches left by the previous one, and
  the parent never opens the accelerator, so a child can own a device (TPU, GPU) alone.
The cost is a few seconds of imports per precision.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from torch.utils.flop_counter import FlopCounterMode

from dia_tpu.bench import aligned, in_fresh_process, left_out, left_out_lines
from dia_tpu.bench.limits import MATMUL_SIZE, MatmulRecorder, matmul_rate, products_alone
from dia_tpu.config import PRECISIONS, Config
from dia_tpu.errors import UserError
from dia_tpu.families import family_of
from dia_tpu.model.adapters import count_parameters
from dia_tpu.precision import device_type
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.step import build_trainable, make_optimizer, train_step

# Measured when no --precision is given.
DEFAULT_PRECISIONS = ("no", "bf16")
# The dtype the limit's matmul runs in per mixed precision (autocast runs matrix products in the low precision).
MATMUL_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench(
    cfg: Config | dict[str, Config], steps: int, warmup: int, precisions: list[str], skip_slow: bool = False
) -> list[dict]:
    """Time `warmup` untimed then `steps` timed training steps per precision, each in its own process.

    `cfg` is one config, or named variants of one (e.g. {"base": ..., "checkpointing": ...}), each measured
    at every precision. Measures one process on one device; returns one result dict per run (see `run_one`).
    A precision this CPU has no instructions for (tens of times slower than fp32) is a row that says so
    instead, with `skip_slow`, and is measured after a warning without it.
    """
    variants = cfg if isinstance(cfg, dict) else {"": cfg}
    if steps <= 0 or warmup < 0:
        raise UserError(f"bench needs steps > 0 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
    skipped = left_out(precisions, device_type(), skip_slow)
    results = []
    for name, variant in variants.items():
        for precision in precisions:
            if precision in skipped:
                results.append({"variant": name, "precision": precision, "skipped": skipped[precision]})
                continue
            try:
                result = in_fresh_process(run_one, variant, steps, warmup, precision)
            except Exception as err:  # one variant running out of memory must not lose the others
                if not name:
                    raise
                result = {"precision": precision, "error": f"{type(err).__name__}: {err}"[:300]}
            results.append({"variant": name, **result})
    return results


def run_one(cfg: Config, steps: int, warmup: int, precision: str) -> dict:
    """One precision in the current process: build, prepare, warm up, time. Call it in a fresh process."""
    t = cfg.train
    accelerator = Accelerator(mixed_precision=precision)
    set_seed(t.seed)
    runtime = Runtime.of(accelerator, cfg)
    on_xla = runtime.on_xla
    baseline_rss = _current_rss_mib()
    family = family_of(cfg.model)
    model = build_trainable(cfg, runtime)
    params, trainable = count_parameters(model)
    batch = send_to_device(family.synthetic_batch(cfg, model), accelerator.device)
    scorer = family.scorer(t, model).to(accelerator.device)
    model, optimizer = accelerator.prepare(model, make_optimizer(t, model, runtime))
    model.train()

    def step() -> torch.Tensor:
        totals, _ = train_step(accelerator, model, optimizer, None, [batch], scorer, t.max_grad_norm)
        if on_xla:
            # No prepared dataloader cuts the lazy graph here, so each step would otherwise extend the last.
            import torch_xla.core.xla_model as xm

            xm.mark_step()
        return totals[0] / totals[1]

    if on_xla:
        from dia_tpu.training import xla

        origin = xla.counters()
    # The FLOPs of one step and its matrix products, recorded on the first untimed step (one more when there is
    # no warm-up).
    with FlopCounterMode(display=False) as counter, MatmulRecorder() as products:
        loss = step()
    flops = counter.get_total_flops()
    for _ in range(warmup - 1):
        loss = step()
    _finish(accelerator, loss)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    final_loss = _finish(accelerator, loss)
    seconds = time.perf_counter() - start

    frames = t.batch_size * cfg.data.max_audio_frames * steps  # real codec frames; BOS, EOS and delay excluded
    on_cuda = accelerator.device.type == "cuda"
    compiled = {}
    if on_xla:
        now = xla.counters()
        compiled = {
            "xla_compiles": now["compiles"] - origin["compiles"],
            "xla_compile_seconds": now["compile_seconds"] - origin["compile_seconds"],
        }
    # ru_maxrss is in KiB on Linux: the whole process's peak, imports and model included.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    limit = None if on_xla else matmul_rate(accelerator.device, MATMUL_DTYPES[precision])
    # On XLA the products are traced, not run: nothing was recorded and nothing is replayed.
    products_seconds, products_flops = products_alone(products.seen) if products.seen else (None, None)
    achieved = flops * steps / seconds
    return {
        **compiled,
        "precision": precision,
        "device": str(accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "params": params,
        "trainable": trainable,
        "batch_size": t.batch_size,
        "max_audio_frames": cfg.data.max_audio_frames,
        # Dia reads its text apart from the audio; Dia2's text rides in the audio frames.
        "max_text_tokens": cfg.data.max_text_tokens if family.byte_text else None,
        "warmup": warmup,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "step_ms": 1000.0 * seconds / steps,
        "frames": frames,
        "frames_per_s": frames / seconds,
        "final_loss": final_loss,
        "flops_per_step": flops,
        "flops_per_s": achieved,
        "matmul_flops_per_s": limit,  # None on XLA, whose matmul would be timed with its compilation
        "share_of_matmul": achieved / limit if limit else None,
        # The step's matrix products alone, replayed at their shapes: the floor of the step time.
        "products_ms": 1000.0 * products_seconds if products_seconds is not None else None,
        "products_flops": products_flops,
        "products_share_of_step": products_seconds * steps / seconds if products_seconds is not None else None,
        "peak_rss_mib": peak_rss,
        # What training added to the process: the peak above the resident size just before the model was built.
        "peak_rss_above_baseline_mib": peak_rss - baseline_rss,
        "peak_device_mib": torch.cuda.max_memory_allocated(accelerator.device) / 2**20 if on_cuda else None,
    }


def _current_rss_mib() -> float:
    """This process's resident memory now (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _finish(accelerator: Accelerator, loss: torch.Tensor) -> float:
    """Wait until queued device work is done: reading a scalar blocks on every backend (CUDA, XLA, CPU)."""
    accelerator.wait_for_everyone()
    return loss.item()


def format_table(results: list[dict]) -> str:
    """The results as an aligned text table, one row per precision."""
    header = (
        "variant",
        "precision",
        "device",
        "threads",
        "params",
        "trainable",
        "step ms",
        "steps/s",
        "frames/s",
        "GFLOP/step",
        "GFLOP/s",
        "matmul GFLOP/s",
        "of matmul",
        "products ms",
        "of step",
        "peak MiB",
    )
    rows = [header]
    for r in results:
        if "error" in r:
            rows.append((r.get("variant") or "-", r["precision"], "failed: " + r["error"][:60], *[""] * 13))
            continue
        if "skipped" in r:
            rows.append((r.get("variant") or "-", r["precision"], "not measured: see below", *[""] * 13))
            continue
        limit = r["matmul_flops_per_s"]
        peak = r["peak_device_mib"] if r["peak_device_mib"] is not None else r["peak_rss_mib"]
        rows.append(
            (
                r.get("variant") or "-",
                r["precision"],
                r["device"],
                str(r["torch_threads"]),
                f"{r['params'] / 1e6:.2f} M",
                f"{r['trainable'] / 1e6:.2f} M",
                f"{r['step_ms']:.1f}",
                f"{r['steps_per_s']:.3f}",
                f"{r['frames_per_s']:.0f}",
                f"{r['flops_per_step'] / 1e9:.2f}",
                f"{r['flops_per_s'] / 1e9:.1f}",
                f"{limit / 1e9:.1f}" if limit else "-",
                f"{100 * r['share_of_matmul']:.0f} %" if limit else "-",
                f"{r['products_ms']:.1f}" if r["products_ms"] is not None else "-",
                f"{100 * r['products_share_of_step']:.0f} %" if r["products_ms"] is not None else "-",
                f"{peak:.0f}",
            )
        )
    lines = aligned(rows)
    lines += left_out_lines(results)
    done = [r for r in results if "error" not in r and "skipped" not in r]
    if done:
        r = done[0]
        lines.append(
            f"batch {r['batch_size']} x {r['max_audio_frames']} audio frames"
            + (f", {r['max_text_tokens']} text tokens" if r["max_text_tokens"] else " (the text in them)")
            + "; "
            f"{r['warmup']} warm-up + {r['steps']} timed steps; peak MiB is "
            + ("device memory" if r["peak_device_mib"] is not None else "process RSS")
        )
        lines.append(
            f"GFLOP/step: matrix products and attention of a step, forward and backward (torch's "
            f"FlopCounterMode); matmul GFLOP/s: a {MATMUL_SIZE}x{MATMUL_SIZE} matmul in the precision's "
            "dtype on the same device and threads, the limit the step is a share of"
        )
        lines.append(
            "products ms: the step's own matrix products alone, replayed at their shapes and dtypes on the "
            "same threads: the floor of the step time (of step: their share of it)"
        )
    return "\n".join(lines)
