"""`dia-tpu plan`: parameters and memory per device of a config's training step, and what it fits on.

Weights, gradients and optimizer state follow from the parameters: every weight is fp32 (Accelerate's mixed
precision autocasts and keeps fp32 master weights), every trainable one has an fp32 gradient, and the
optimizer keeps what its implementation keeps (`dia_tpu.plan.optimizer`).

Activations come from `dia_tpu.plan.trace`.

The step's peak is then: weights + optimizer state + the larger of
  - the forward+backward high-water mark (activations, gradients produced so far, temporaries), and
  - the optimizer update: all gradients plus its temporaries, which depend on the implementation torch or
    bitsandbytes picks on the device (`dia_tpu.plan.optimizer`).
With gradient accumulation, later micro-batches run forward and backward with every gradient already held.
With several processes, plain data parallel keeps all of it on every device, and DDP adds flat gradient
buckets as large as the gradients (not on XLA, whose all-reduce is part of the compiled step).

Sharded (`train.sharding: fsdp`, FSDP2 on GPUs, SPMD on TPUs) over N devices divides weights, gradients,
optimizer state and autocast's weight copies by N, not activations (each device computes its own part of the
batch), and adds what is gathered whole for a moment: the root unit's weights (the decoder's embeddings and the
output head, kept from the forward to the backward), two layers' weights (the one in use and the next one,
fetched ahead) and one layer's gradients before they are reduced and scattered. The sharded table gives, for
each kind of device, the smallest count (a TPU slice, a number of GPUs) whose per-device total fits, with
`train.batch_size` items per device.

A device fits when the total is at most (1 - HEADROOM) of its memory: the rest is kept for what the
trace does not see (the CUDA context and library workspaces, the XLA runtime and its compiled programs,
allocator fragmentation, FSDP's gathered layer). The trace is of eager PyTorch on CPU; CUDA's attention
kernels and XLA's compiled graphs keep similar but not identical intermediates, which the headroom also
covers. Evaluation and sample generation run without gradients and need less than a training step;
DataLoader workers are processes of their own, on the host.

scripts/check_plan.py compares the estimate with measured peaks (benchmarks/plan_cpu.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dia_tpu.config import Config
from dia_tpu.errors import UserError
from dia_tpu.families import Family, family_of
from dia_tpu.plan.optimizer import optimizer_kind, optimizer_state_bytes, update_temporaries
from dia_tpu.plan.trace import Trace, planned_precision, trace_step

GIB = 2**30


# Fraction of each device's memory kept free for the framework, the allocator and what the trace misses.
HEADROOM = 0.15


# (name, memory in GiB, the device kind whose optimizer implementation applies). GPU sizes are nominal;
# TPU figures are HBM per chip.
DEVICES = (
    ("GPU 16 GB", 16, "cuda"),
    ("GPU 24 GB", 24, "cuda"),
    ("GPU 40 GB", 40, "cuda"),
    ("GPU 80 GB", 80, "cuda"),
    ("TPU v5e", 16, "xla"),
    ("TPU v4", 32, "xla"),
    ("TPU v5p", 95, "xla"),
)


# The device counts a sharded run can have: GPUs in any power of two; TPU slices by chip count (v4 and v5p
# slices are named by TensorCores, two a chip, and start at 4 chips).
SHARDED_COUNTS = {
    "cuda": (1, 2, 4, 8, 16, 32, 64),
    "TPU v5e": (1, 4, 8, 16, 32, 64, 128, 256),
    "TPU v4": (4, 8, 16, 32, 64, 128, 256),
    "TPU v5p": (4, 8, 16, 32, 64, 128, 256),
}


@dataclass
class Fit:
    """Whether the step fits one kind of device; None where the configured optimizer cannot run there."""

    device: str
    memory: int  # bytes
    usable: int  # bytes after HEADROOM
    data_parallel: int  # bytes per device with everything replicated
    fsdp: int  # bytes per device with weights, gradients and optimizer state sharded
    fits_data_parallel: bool | None
    fits_fsdp: bool | None


@dataclass
class Slice:
    """The fewest devices of one kind a sharded step fits on, with its bytes per device (None: none fits up to
    the largest count tried, or the optimizer cannot run there)."""

    device: str
    count: int | None
    name: str  # the slice's usual name (v5e-8, v4-8 for 4 chips), or "N GPUs"
    usable: int
    weights: int
    gradients: int
    optimizer_state: int
    step_peak: int  # the larger of forward+backward and the update, sharded
    gathered: int
    total: int


@dataclass
class MemoryPlan:
    """Bytes per device of one training step of a config (see the module docstring for how)."""

    params: int
    trainable: int
    processes: int
    device: str  # "cuda", "xla" or "cpu": whose optimizer implementation `total` assumes
    batch_size: int
    family: str  # the model family, "dia" or "dia2"
    text_tokens: int | None  # Dia's text encoder's tokens; None for Dia2, whose text rides in the frames
    decoder_steps: int  # positions the model runs over: audio frames + BOS/EOS + the delay, as the collator pads
    accumulation: int  # micro-batches per optimizer step
    mixed_precision: str
    gradient_checkpointing: bool
    optimizer: str  # the optimizer and its update implementation, e.g. "adamw (fused)"
    weights: int  # all parameters, fp32
    gradients: int  # trainable parameters, fp32
    optimizer_state: int
    activations: int  # live after forward + loss
    autocast_copies: int  # most bytes of autocast's weight copies alive at once (cached through the forward)
    backward_peak: int  # forward+backward high-water mark: activations, gradients so far, temporaries
    update_temporaries: int  # what the optimizer update allocates beside the gradients
    ddp_buckets: int  # DDP's gradient buckets, with several processes off XLA
    total: int  # per device, data parallel
    fsdp_total: int  # per device, weights, gradients and optimizer state sharded over `processes`
    gathered: int  # what a sharded step holds whole for a moment (see the module docstring); 0 on one device
    sharding: str  # the config's train.sharding: which of `total` and `fsdp_total` the run will have
    fits: list[Fit] = field(default_factory=list)
    sharded: list[Slice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def update_peak(self) -> int:
        """The optimizer update's high-water mark above weights and optimizer state."""
        return self.gradients + self.update_temporaries


def estimate(cfg: Config, processes: int = 1, device: str = "cuda") -> MemoryPlan:
    """The memory plan of `cfg`'s training step on `processes` devices. `device` ("cuda", "xla" or "cpu")
    picks the optimizer implementation that `total` assumes; the fits table uses each device's own."""
    if processes < 1:
        raise UserError(f"processes must be >= 1, got {processes}")
    if device not in ("cuda", "xla", "cpu"):
        raise UserError(f"device must be 'cuda', 'xla' or 'cpu', got {device!r}")
    trace, model = trace_step(cfg)
    family = family_of(cfg.model)
    params = list(model.parameters())
    sizes = [p.numel() for p in params if p.requires_grad]
    t = cfg.train
    parts = _Parts(
        weights=sum(p.untyped_storage().nbytes() for p in params),
        gradients=4 * sum(sizes),
        state=optimizer_state_bytes(t.optimizer, sizes),
        trace=trace,
        accumulation=t.gradient_accumulation_steps,
        processes=processes,
        units=_units(model, family),
    )
    kind = optimizer_kind(cfg, device)
    temporaries = update_temporaries(kind, device, sizes)
    fits = []
    for name, gib, on in DEVICES:
        memory, on_kind = gib * GIB, optimizer_kind(cfg, on)
        usable = int(memory * (1 - HEADROOM))
        dp, fsdp = parts.totals(on, update_temporaries(on_kind, on, sizes))
        runs = on_kind != "unsupported"
        fits.append(
            Fit(name, memory, usable, dp, fsdp, dp <= usable if runs else None, fsdp <= usable if runs else None)
        )
    total, fsdp_total = parts.totals(device, temporaries)
    sharded = [
        _smallest_slice(parts, name, gib * GIB, update_temporaries(optimizer_kind(cfg, on), on, sizes))
        for name, gib, on in DEVICES
        if optimizer_kind(cfg, on) != "unsupported"
    ]
    notes = []
    if kind == "unsupported":
        notes.append(f"train.optimizer={t.optimizer} has no kernels for {device}")
    if t.mixed_precision == "auto":
        notes.append(
            "train.mixed_precision=auto: planned as bf16, what it picks on GPUs and TPUs (fp32 on a CPU "
            "without bf16 instructions)"
        )
    if cfg.model.compile:
        notes.append("model.compile: the trace is of the eager model; compiled graphs may keep fewer tensors")
    return MemoryPlan(
        params=sum(p.numel() for p in params),
        trainable=sum(sizes),
        processes=processes,
        device=device,
        batch_size=t.batch_size,
        family=family.name,
        text_tokens=cfg.data.max_text_tokens if family.byte_text else None,
        decoder_steps=trace.decoder_steps,
        accumulation=t.gradient_accumulation_steps,
        mixed_precision=planned_precision(t.mixed_precision),
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        optimizer=f"{t.optimizer} ({kind})",
        weights=parts.weights,
        gradients=parts.gradients,
        optimizer_state=parts.state,
        activations=trace.activations,
        autocast_copies=trace.autocast_copies,
        backward_peak=parts.backward_peak(),
        update_temporaries=temporaries,
        ddp_buckets=parts.ddp_buckets(device),
        total=total,
        fsdp_total=fsdp_total,
        gathered=parts.gathered(processes),
        sharding=t.sharding,
        fits=fits,
        sharded=sharded,
        notes=notes,
    )


def _units(model: torch.nn.Module, family: Family) -> tuple[int, int, int]:
    """Bytes of (the root unit's weights, the largest layer's weights, the largest layer's trainable weights):
    the units a sharded run gathers whole, one at a time. The layers are the family's repeated ones (Dia: the
    encoder's and decoder's; Dia2: the backbone's and depformer's); an input embedding the family exposes (Dia's
    text embedding) is a unit of its own under FSDP2 and small; the root holds the rest."""
    layers = [m for m in model.modules() if type(m).__name__ in family.shard_units]
    sizes = [sum(p.untyped_storage().nbytes() for p in layer.parameters()) for layer in layers]
    trainable = [sum(4 * p.numel() for p in layer.parameters() if p.requires_grad) for layer in layers]
    root = sum(p.untyped_storage().nbytes() for p in model.parameters()) - sum(sizes)
    family.expose_input_embeddings(model)
    embedding = getattr(model, "get_input_embeddings", lambda: None)()
    own = embedding.weight.untyped_storage().nbytes() if embedding is not None else 0
    return root - own, max(sizes, default=0), max(trainable, default=0)


def _smallest_slice(parts: _Parts, device: str, memory: int, temporaries: int) -> Slice:
    usable = int(memory * (1 - HEADROOM))
    counts = SHARDED_COUNTS.get(device, SHARDED_COUNTS["cuda"])
    for n in counts:
        if parts.sharded_total(temporaries, n) <= usable:
            break
    else:
        n = None
    at = n or counts[-1]
    if device.startswith("TPU"):
        chip = device.split()[1]
        name = f"{chip}-{at * (2 if chip in ('v4', 'v5p') else 1)}"
    else:
        name = f"{at} GPU{'s' if at > 1 else ''}"
    return Slice(
        device,
        n,
        name,
        usable,
        math.ceil(parts.weights / at),
        math.ceil(parts.gradients / at),
        math.ceil(parts.state / at),
        parts.sharded_peak(temporaries, at),
        parts.gathered(at),
        parts.sharded_total(temporaries, at),
    )


@dataclass
class _Parts:
    """The pieces every total is made of, and how they combine."""

    weights: int
    gradients: int
    state: int
    trace: Trace
    accumulation: int
    processes: int
    units: tuple[int, int, int]  # (root, largest layer, its trainable part) weight bytes: `_units`

    def backward_peak(self, shards: int = 1) -> int:
        """The forward+backward high-water mark with gradients and autocast's weight copies sharded over `shards`
        devices."""
        if self.accumulation > 1:
            # Later micro-batches run with every gradient held. A new gradient is added into the held one and
            # freed; until then the trace counts it among the other bytes, so peak(0) holds that transient.
            return int(self.trace.peak(0, 1 / shards) + self.gradients / shards)
        return self.trace.peak(1 / shards, 1 / shards)

    def gathered(self, shards: int) -> int:
        """What a step sharded over `shards` devices holds whole at once beside its shards."""
        root, layer, layer_gradients = self.units
        return 0 if shards == 1 else root + 2 * layer + layer_gradients

    def sharded_peak(self, temporaries: int, shards: int) -> int:
        return math.ceil(max(self.backward_peak(shards), (self.gradients + temporaries) / shards))

    def sharded_total(self, temporaries: int, shards: int) -> int:
        """Bytes per device of the step sharded over `shards` devices (on one: the step as it is)."""
        weights_and_state = math.ceil((self.weights + self.state) / shards)
        return weights_and_state + self.sharded_peak(temporaries, shards) + self.gathered(shards)

    def ddp_buckets(self, device: str) -> int:
        # DDP all-reduces through flat buckets as large as all gradients together; on XLA the all-reduce
        # is part of the compiled step.
        return self.gradients if self.processes > 1 and device != "xla" else 0

    def totals(self, device: str, temporaries: int) -> tuple[int, int]:
        """(data parallel, FSDP) bytes per device: weights + optimizer state + the larger step peak."""
        n = self.processes
        dp = self.weights + self.state + self.ddp_buckets(device)
        dp += max(self.backward_peak(), self.gradients + temporaries)
        return dp, self.sharded_total(temporaries, n)
