"""What the optimizer holds and allocates, for `dia-tpu plan`: which update implementation training gets on a
device, the bytes of its state, and the temporaries of its update.

AdamW keeps two fp32 moments per trainable weight; bitsandbytes' 8-bit AdamW one byte per moment plus a
per-256-block fp32 scale for tensors of 4096 elements or more, two fp32 moments below. The update allocates
what the implementation torch or bitsandbytes picks on the device allocates: fused, nothing; foreach, a
second-moment-sized set; per tensor, two copies of the largest tensor; bitsandbytes on CPU, five fp32 copies of
the largest tensor.
"""

from __future__ import annotations

import math

import torch

from dia_tpu.config import Config
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.step import make_optimizer

# bitsandbytes' 8-bit optimizers: tensors below this many elements keep 32-bit moments; above, moments are
# quantized in blocks of this size with one fp32 absmax per block (bitsandbytes/optim/optimizer.py).
_BNB_MIN_8BIT = 4096
_BNB_BLOCK = 256
_BNB_QMAPS = 2 * 256 * 4  # the signed and unsigned 256-entry fp32 quantization maps, shared by all tensors


def optimizer_kind(cfg: Config, device: str) -> str:
    """Which update implementation training gets on `device`: build the optimizer `make_optimizer` builds
    (for one small real parameter) and read what it chose."""
    t = cfg.train
    if t.optimizer == "adamw_8bit":
        return "bitsandbytes" if device != "xla" else "unsupported"
    optimizer = make_optimizer(t, torch.nn.Linear(1, 1), Runtime.assumed(cfg, device))
    if optimizer.defaults.get("fused"):
        return "fused"
    if optimizer.defaults.get("foreach") or (optimizer.defaults.get("foreach") is None and device == "cuda"):
        return "foreach"
    return "per-tensor"


def optimizer_state_bytes(optimizer: str, sizes: list[int]) -> int:
    """Bytes of optimizer state for trainable tensors of `sizes` elements."""
    if optimizer == "adamw":
        return 8 * sum(sizes)
    quantized = [n for n in sizes if n >= _BNB_MIN_8BIT]
    small = sum(n for n in sizes if n < _BNB_MIN_8BIT)
    blocks = sum(math.ceil(n / _BNB_BLOCK) for n in quantized)
    return 8 * small + 2 * sum(quantized) + 2 * 4 * blocks + (_BNB_QMAPS if quantized else 0)


def update_temporaries(kind: str, device: str, sizes: list[int]) -> int:
    """Bytes the optimizer update allocates beside the state, for fp32 trainable tensors of `sizes`."""
    largest = 4 * max(sizes, default=0)
    if kind in ("fused", "unsupported"):
        return 0
    if kind == "foreach":
        return 4 * sum(sizes)  # sqrt of every second moment at once, then divided and offset in place
    if kind == "per-tensor":
        return 2 * largest  # the sqrt of one second moment and its bias-corrected quotient
    # bitsandbytes: one fused kernel per tensor on CUDA; on CPU each tensor's moments are dequantized to
    # fp32, the gradient scaled into a copy, and the denominator built from a sqrt: five fp32 copies.
    return 0 if device == "cuda" else 5 * largest
