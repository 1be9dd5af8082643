"""`dia-tpu plan`: parameters and memory per device of a config's training step, and what it fits on.

Weights, gradients and optimizer state follow from the parameters: every weight is fp32 (Accelerate's mixed
precision autocasts and keeps fp32 master weights), every trainable one has an fp32 gradient, and the
optimizer keeps what its implementation keeps (AdamW two fp32 moments; bitsandbytes' 8-bit AdamW one byte
per moment plus a per-256-block fp32 scale for tensors of 4096 elements or more, two fp32 moments below).

Activations are not derived from formulas. `trace_step` runs one real training step of the model that
training builds (same config, attention implementation, gradient checkpointing, freezing and LoRA, the
collator's batch shape, Accelerate's autocast with its fp32 output conversion, the shared loss) under
torch's FakeTensorMode: every tensor has a shape, dtype and storage size but no memory behind it, so even
Dia-1.6B traces in seconds. A TorchDispatchMode sees the output of every operator, forward and backward
(recomputation under checkpointing included), registers each new storage with a weak reference whose
callback fires when the storage is freed, and so keeps the bytes live at every moment and their high-water
mark. Storages that exist before the step (parameters, buffers, the batch) and views of them are not
counted. Live bytes rather than `saved_tensors_hooks` because non-reentrant checkpointing keeps each
checkpointed layer's inputs outside the saved-tensor hooks, and autocast keeps a low-precision copy of
each trainable weight cached until the forward returns, also under checkpointing (3 GiB for Dia-1.6B in
bf16); live bytes see both, and the backward's transient tensors, and when gradients and activations
coexist. The trace keeps, after every operator, the bytes of gradients and of everything else.

The step's peak is then: weights + optimizer state + the larger of
  - the forward+backward high-water mark (activations, gradients produced so far, temporaries), and
  - the optimizer update: all gradients plus its temporaries, which depend on the implementation torch or
    bitsandbytes picks on the device (fused: none; foreach: a second-moment-sized set; per tensor: two
    copies of the largest tensor; bitsandbytes on CPU: five fp32 copies of the largest tensor).
With gradient accumulation, later micro-batches run forward and backward with every gradient already held.
With several processes, plain data parallel keeps all of it on every device, and DDP adds flat gradient
buckets as large as the gradients (not on XLA, whose all-reduce is part of the compiled step); FSDP divides
weights, gradients and optimizer state by the number of processes, not activations.

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
import weakref
from dataclasses import dataclass, field

import torch
from accelerate.utils import convert_outputs_to_fp32
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import DiaForConditionalGeneration

from dia_tpu.bench import synthetic_batch
from dia_tpu.config import Config
from dia_tpu.loss import batch_loss, codebook_weights, target_weight
from dia_tpu.model import architecture_config, attention_for
from dia_tpu.train import set_up_for_training

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
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bitsandbytes' 8-bit optimizers: tensors below this many elements keep 32-bit moments; above, moments are
# quantized in blocks of this size with one fp32 absmax per block (bitsandbytes/optim/optimizer.py).
_BNB_MIN_8BIT = 4096
_BNB_BLOCK = 256
_BNB_QMAPS = 2 * 256 * 4  # the signed and unsigned 256-entry fp32 quantization maps, shared by all tensors


@dataclass
class Trace:
    """What one traced training step kept live, in bytes (beyond parameters, buffers and the batch)."""

    activations: int  # live after forward + loss: what backward needs, checkpoint inputs, autocast copies
    autocast_copies: int  # most bytes of autocast's low-precision weight copies alive at once
    decoder_steps: int  # decoder positions of the traced batch (audio frames + BOS/EOS + delay)
    # After every operator: (live bytes other than gradients, bytes of the gradients produced so far).
    timeline: list[tuple[int, int]]

    def peak(self, gradient_share: float = 1.0) -> int:
        """The high-water mark of live bytes, gradients counted at `gradient_share` (1/N: sharded over N)."""
        return int(max(other + gradient_share * gradients for other, gradients in self.timeline))


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
class MemoryPlan:
    """Bytes per device of one training step of a config (see the module docstring for how)."""

    params: int
    trainable: int
    processes: int
    device: str  # "cuda", "xla" or "cpu": whose optimizer implementation `total` assumes
    batch_size: int
    text_tokens: int
    decoder_steps: int  # decoder positions: audio frames + BOS + EOS + the delay, as the collator pads
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
    fits: list[Fit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def update_peak(self) -> int:
        """The optimizer update's high-water mark above weights and optimizer state."""
        return self.gradients + self.update_temporaries


def fake_trainable(cfg: Config, mode: FakeTensorMode) -> torch.nn.Module:
    """The model as `train.build_trainable` sets it up, its parameters and buffers fake tensors of `mode`.

    It is built on the meta device, where peft can add its adapters (under FakeTensorMode, peft's move of
    each adapter to its base layer's device fails), then every tensor is replaced by a fake one.
    """
    with torch.device("meta"):
        model = DiaForConditionalGeneration(architecture_config(cfg.model))
    model.set_attn_implementation(attention_for(cfg.model, on_xla=False))
    model = set_up_for_training(model, cfg)
    made: dict[int, torch.Tensor] = {}  # a parameter shared by two modules stays shared
    with mode:
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if id(param) not in made:
                    fake = torch.empty(param.shape, dtype=param.dtype)
                    made[id(param)] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
                setattr(module, name, made[id(param)])
            for name, buffer in list(module.named_buffers(recurse=False)):
                setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype))
    return model.train()


class _LiveBytes(TorchDispatchMode):
    """The storages operators create, while they live: all their bytes, those of weight copies (casts of a
    parameter) and those of gradients (counted by `count_gradient` as each is accumulated)."""

    def __init__(self, params: list[torch.Tensor], others: list[torch.Tensor]):
        super().__init__()
        self.live = self.gradients = self.copies = self.copies_peak = 0
        self.timeline: list[tuple[int, int]] = []
        self._refs: dict[int, weakref.ref] = {}
        self._sizes: dict[int, int] = {}
        for tensor in params + others:
            storage = tensor.untyped_storage()
            self._refs[id(storage)] = weakref.ref(storage)
        self._params = {id(p.untyped_storage()) for p in params}
        self._copies: set[int] = set()  # keys of live weight copies

    def _known(self, storage) -> bool:
        ref = self._refs.get(id(storage))
        return ref is not None and ref() is storage

    def _freed(self, key: int, _ref) -> None:
        size = self._sizes.pop(key)
        self.live -= size
        self._refs.pop(key, None)
        if key in self._copies:
            self._copies.discard(key)
            self.copies -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        weight_copy = func is torch.ops.aten._to_copy.default and id(args[0].untyped_storage()) in self._params
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if self._known(storage):
                continue
            key = id(storage)
            self._sizes[key] = storage.nbytes()
            self._refs[key] = weakref.ref(storage, lambda ref, key=key: self._freed(key, ref))
            self.live += self._sizes[key]
            if weight_copy:
                self._copies.add(key)
                self.copies += self._sizes[key]
                self.copies_peak = max(self.copies_peak, self.copies)
        self.timeline.append((self.live - self.gradients, self.gradients))
        return out

    def count_gradient(self, param: torch.Tensor) -> None:
        self.gradients += param.grad.untyped_storage().nbytes()


def trace_step(cfg: Config) -> tuple[Trace, torch.nn.Module]:
    """Trace forward, loss and backward of one micro-batch of `cfg`'s shape without allocating it."""
    mode = FakeTensorMode()
    model = fake_trainable(cfg, mode)
    batch = {key: mode.from_tensor(value) for key, value in synthetic_batch(cfg, model.config).items()}
    weights = mode.from_tensor(codebook_weights(cfg.train.codebook_weights, len(model.config.delay_pattern)))
    precision = cfg.train.mixed_precision
    if precision in _AUTOCAST:
        # What Accelerate's prepare does to the forward: autocast inside, outputs converted to fp32 after.
        model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=_AUTOCAST[precision])(model.forward))
    params = list(model.parameters())
    tracker = _LiveBytes(params, list(model.buffers()) + list(batch.values()) + [weights])
    for param in params:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(tracker.count_gradient)
    with mode, tracker:
        parts = batch_loss(model, batch, weights)
        loss = parts.weighted_sum / target_weight(batch["labels"], weights)
        activations = tracker.live
        loss.backward()
    trace = Trace(activations, tracker.copies_peak, batch["decoder_input_ids"].shape[1], tracker.timeline)
    return trace, model


def optimizer_kind(cfg: Config, device: str) -> str:
    """Which update implementation training gets on `device`: build the optimizer `make_optimizer` builds
    (for one small real parameter) and read what it chose."""
    from dia_tpu.train import make_optimizer

    t = cfg.train
    if t.optimizer == "adamw_8bit":
        return "bitsandbytes" if device != "xla" else "unsupported"
    optimizer = make_optimizer(t, torch.nn.Linear(1, 1), device == "xla")
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


def estimate(cfg: Config, processes: int = 1, device: str = "cuda") -> MemoryPlan:
    """The memory plan of `cfg`'s training step on `processes` devices. `device` ("cuda", "xla" or "cpu")
    picks the optimizer implementation that `total` assumes; the fits table uses each device's own."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if device not in ("cuda", "xla", "cpu"):
        raise ValueError(f"device must be 'cuda', 'xla' or 'cpu', got {device!r}")
    trace, model = trace_step(cfg)
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
    )
    kind = optimizer_kind(cfg, device)
    temporaries = update_temporaries(kind, device, sizes)
    fits = []
    for name, gib, on in DEVICES:
        memory, on_kind = gib * GIB, optimizer_kind(cfg, on)
        usable = int(memory * (1 - HEADROOM))
        dp, fsdp = parts.totals(on, update_temporaries(on_kind, on, sizes))
        runs = on_kind != "unsupported"
        fits.append(Fit(name, memory, usable, dp, fsdp, dp <= usable if runs else None,
                        fsdp <= usable if runs else None))  # fmt: skip
    total, fsdp_total = parts.totals(device, temporaries)
    notes = []
    if kind == "unsupported":
        notes.append(f"train.optimizer={t.optimizer} has no kernels for {device}")
    if cfg.model.compile:
        notes.append("model.compile: the trace is of the eager model; compiled graphs may keep fewer tensors")
    return MemoryPlan(
        params=sum(p.numel() for p in params),
        trainable=sum(sizes),
        processes=processes,
        device=device,
        batch_size=t.batch_size,
        text_tokens=cfg.data.max_text_tokens,
        decoder_steps=trace.decoder_steps,
        accumulation=t.gradient_accumulation_steps,
        mixed_precision=t.mixed_precision,
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
        fits=fits,
        notes=notes,
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

    def backward_peak(self, shards: int = 1) -> int:
        """The forward+backward high-water mark with gradients sharded over `shards` devices."""
        if self.accumulation > 1:
            # Later micro-batches run with every gradient held. A new gradient is added into the held one and
            # freed; until then the trace counts it among the other bytes, so peak(0) holds that transient.
            return int(self.trace.peak(0) + self.gradients / shards)
        return self.trace.peak(1 / shards)

    def ddp_buckets(self, device: str) -> int:
        # DDP all-reduces through flat buckets as large as all gradients together; on XLA the all-reduce
        # is part of the compiled step.
        return self.gradients if self.processes > 1 and device != "xla" else 0

    def totals(self, device: str, temporaries: int) -> tuple[int, int]:
        """(data parallel, FSDP) bytes per device: weights + optimizer state + the larger step peak."""
        n = self.processes
        dp = self.weights + self.state + self.ddp_buckets(device)
        dp += max(self.backward_peak(), self.gradients + temporaries)
        fsdp = (self.weights + self.state) / n
        fsdp += max(self.backward_peak(n), (self.gradients + temporaries) / n)
        return dp, math.ceil(fsdp)


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a text table, sizes in GiB."""

    def gib(n: float) -> str:
        return f"{n / GIB:.2f}"

    share = 100 * plan.trainable / plan.params
    precision = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[plan.mixed_precision]
    rows = [
        ("weights (fp32, all parameters)", plan.weights),
        ("gradients (fp32, trainable parameters)", plan.gradients),
        (f"optimizer state ({plan.optimizer.split()[0]})", plan.optimizer_state),
        ("activations: live after forward + loss", plan.activations),
        *(
            [("autocast weight copies: cached until the forward returns", plan.autocast_copies)]
            if plan.autocast_copies
            else []
        ),
        ("forward+backward peak: activations, copies, gradients so far, temporaries", plan.backward_peak),
        ("optimizer update peak: gradients + update temporaries", plan.update_peak),
    ]
    if plan.ddp_buckets:
        rows.append(("DDP gradient buckets", plan.ddp_buckets))
    rows.append(("total: weights + optimizer state + the larger peak" + (" + buckets" if plan.ddp_buckets else ""),
                 plan.total))  # fmt: skip
    width = max(len(label) for label, _ in rows)
    lines = [
        f"Dia: {plan.params / 1e6:.2f} M parameters, {plan.trainable / 1e6:.2f} M trainable ({share:.2f} %)",
        f"step: {plan.accumulation} x batch {plan.batch_size} of {plan.text_tokens} text tokens and "
        f"{plan.decoder_steps} decoder positions; {precision}, "
        f"{'gradient checkpointing' if plan.gradient_checkpointing else 'no gradient checkpointing'}, "
        f"{plan.optimizer} as on {plan.device}",
        "",
        f"{'per device':<{width + 2}}  {'GiB':>7}",
        *(f"  {label:<{width}}  {gib(value):>7}" for label, value in rows),
        "",
    ]
    n = plan.processes
    if n > 1:
        lines += [
            f"{n} processes, plain data parallel (DDP): every device holds all of the above, as one process does.",
            f"{n} processes, FSDP (weights, gradients and optimizer state sharded): {gib(plan.fsdp_total)} GiB per "
            "device, plus the gathered weights of the layer in flight.",
        ]
    else:
        lines.append("Several processes in plain data parallel hold all of this on every device; FSDP divides "
                     "weights, gradients and optimizer state among them (--processes N).")  # fmt: skip
    lines += ["", f"fits with {HEADROOM:.0%} of each device's memory kept for the framework, allocator and kernel "
              "workspaces (totals per device use that device's optimizer implementation):"]  # fmt: skip
    header = ["device", "GiB", "usable", "data parallel" if n > 1 else "needs", "fits"]
    if n > 1:
        header += [f"FSDP x{n}", "fits"]
    table = [header]
    for fit in plan.fits:
        row = [fit.device, gib(fit.memory), gib(fit.usable)]
        if fit.fits_data_parallel is None:
            row += ["-", "n/a"] * (2 if n > 1 else 1)
        else:
            row += [gib(fit.data_parallel), "yes" if fit.fits_data_parallel else "no"]
            if n > 1:
                row += [gib(fit.fsdp), "yes" if fit.fits_fsdp else "no"]
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(w) if i in (0, 4, 6) else cell.rjust(w) for i, (cell, w) in pairs]
        lines.append("  " + "  ".join(cells).rstrip())
    if any(fit.fits_data_parallel is None for fit in plan.fits):
        lines.append(f"n/a: {plan.optimizer.split()[0]} has no kernels for that device")
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)
