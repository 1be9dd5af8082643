"""The learning-rate schedules: linear warm-up, then cosine decay to 0, linear decay to 0, or constant."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def make_scheduler(kind: str, optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A LambdaLR over scheduler steps: the base rate times `rate_factor` of the step."""
    return LambdaLR(optimizer, partial(rate_factor, kind, warmup_steps, total_steps))


def rate_factor(kind: str, warmup_steps: int, total_steps: int, step: int) -> float:
    """The multiple of the base learning rate at scheduler step `step`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
