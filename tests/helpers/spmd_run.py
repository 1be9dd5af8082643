"""Sharded training under SPMD on torch_xla's CPU device, in a process of its own (SPMD cannot be switched off in
a process once on). Run by tests/test_spmd.py with CPU_NUM_DEVICES=4:

    python tests/helpers/spmd_run.py CODES OUT

1. OUT/sharded: `train()` with train.sharding=fsdp, 8 steps, a checkpoint every 2, an evaluation every 4,
   samples at the end;
2. OUT/resumed: the same run resumed from OUT/sharded/checkpoints/step_4;
3. OUT/probe.json: the sharding XLA gives the parameters, their gradients and AdamW's state after one step of
   the recipe's own building blocks, and the optimizer state after `load_state` before and after
   `reshard_optimizer_state`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch_xla  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from conftest import reset_accelerate, tiny  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dia_tpu.data.batching import make_collator  # noqa: E402
from dia_tpu.data.dataset import load_splits  # noqa: E402
from dia_tpu.families.dia.loss import batch_loss, codebook_weights  # noqa: E402
from dia_tpu.training import spmd  # noqa: E402
from dia_tpu.training.checkpoint import load_checkpoint  # noqa: E402
from dia_tpu.training.recipe import train  # noqa: E402
from dia_tpu.training.runtime import Runtime  # noqa: E402
from dia_tpu.training.sharding import Sharding  # noqa: E402
from dia_tpu.training.step import build_trainable, make_optimizer  # noqa: E402

# The sharded run: 4 devices, so every batch is a multiple of 4.
SHARDED = [
    "train.sharding=fsdp",
    "train.batch_size=4",
    "eval.batch_size=4",
    "data.eval_size=4",
    "train.max_steps=8",
    "train.save_every=2",
    "train.keep_last=4",
    "eval.eval_every=4",
    "train.log_every=1",
    "samples.every=8",
    'samples.prompts=[{name: hi, text: "[S1] Hi there."}]',
    "samples.max_seconds=0.3",
]


def probe(codes: Path, out: Path) -> dict:
    cfg = tiny(codes, out / "probe", *SHARDED)
    sharding = Sharding.before_accelerator(cfg)
    accelerator = Accelerator()
    runtime = Runtime.of(accelerator, cfg)
    model = build_trainable(cfg, runtime)
    optimizer = make_optimizer(cfg.train, model, runtime)
    model, optimizer = accelerator.prepare(model, optimizer)
    sharding.after_prepare(cfg, model, [])
    collate = make_collator(cfg.data, model.config)
    batch = next(iter(DataLoader(load_splits(cfg).train, batch_size=4, collate_fn=collate)))
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    weights = codebook_weights([], 9).to(accelerator.device)
    accelerator.backward(batch_loss(model, batch, weights).weighted_sum)
    torch_xla.sync()  # a lazy tensor has its sharding once the compiled step has run
    found = {
        "parameters": {n: spmd.sharding_of(p) for n, p in model.named_parameters()},
        "gradients": {n: spmd.sharding_of(p.grad) for n, p in model.named_parameters()},
    }
    optimizer.step()
    torch_xla.sync()
    found["optimizer"] = _state_shardings(model, optimizer)
    load_checkpoint(accelerator, runtime, out / "sharded" / "checkpoints" / "step_4")
    found["optimizer_loaded"] = _state_shardings(model, optimizer)
    sharding.after_resume(optimizer)
    found["optimizer_resharded"] = _state_shardings(model, optimizer)
    found["parameters_loaded"] = {n: spmd.sharding_of(p) for n, p in model.named_parameters()}
    return found


def _state_shardings(model, optimizer) -> dict:
    return {
        f"{name}.{key}": spmd.sharding_of(value)
        for name, p in model.named_parameters()
        for key, value in optimizer.state[p].items()
        if value.dim()
    }


def main(codes: Path, out: Path) -> None:
    train(tiny(codes, out / "sharded", *SHARDED))
    reset_accelerate()
    train(tiny(codes, out / "resumed", *SHARDED, f"train.resume={out / 'sharded' / 'checkpoints' / 'step_4'}"))
    reset_accelerate()
    (out / "probe.json").write_text(json.dumps(probe(codes, out), indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
