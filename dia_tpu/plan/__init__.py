"""`dia-tpu plan`: parameters and memory per device of a config's training step, and what it fits on."""

from dia_tpu.plan.estimate import DEVICES, GIB, HEADROOM, MemoryPlan, estimate
from dia_tpu.plan.optimizer import optimizer_state_bytes
from dia_tpu.plan.table import format_plan
from dia_tpu.plan.trace import Trace, trace_step

__all__ = [
    "DEVICES",
    "GIB",
    "HEADROOM",
    "MemoryPlan",
    "Trace",
    "estimate",
    "format_plan",
    "optimizer_state_bytes",
    "trace_step",
]
