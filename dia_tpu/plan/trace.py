"""The activations of one training step, traced without memory: not derived from formulas.

`trace_step` runs one real training step of the model that training builds (same config, attention
implementation, gradient checkpointing, freezing and LoRA, the collator's batch shape, Accelerate's autocast
with its fp32 output conversion, the shared loss) under torch's FakeTensorMode: every tensor has a shape,
dtype and storage size but no memory behind it, so even Dia-1.6B traces in seconds. A TorchDispatchMode sees
the output of every operator, forward and backward (recomputation under checkpointing included), registers
each new storage with a weak reference whose callback fires when the storage is freed, and so keeps the bytes
live at every moment and their high-water mark. Storages that exist before the step (parameters, buffers, the
batch) and views of them are not counted. Live bytes rather than `saved_tensors_hooks` because non-reentrant
checkpointing keeps each checkpointed layer's inputs outside the saved-tensor hooks, and autocast keeps a low-
precision copy of each trainable weight cached until the forward returns, also under checkpointing (3 GiB for
Dia-1.6B in bf16); live bytes see both, and the backward's transient tensors, and when gradients and
activations coexist. The trace keeps, after every operator, the bytes of gradients and of everything else.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from accelerate.utils import convert_outputs_to_fp32
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dia_tpu.config import Config
from dia_tpu.families import family_of
from dia_tpu.training.runtime import Runtime

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def planned_precision(asked: str) -> str:
    """The precision a plan traces: `auto` is planned as bf16, what it picks on the GPUs and TPUs a plan is
    for."""
    return "bf16" if asked == "auto" else asked


@dataclass
class Trace:
    """What one traced training step kept live, in bytes (beyond parameters, buffers and the batch)."""

    activations: int  # live after forward + loss: what backward needs, checkpoint inputs, autocast copies
    autocast_copies: int  # most bytes of autocast's low-precision weight copies alive at once
    decoder_steps: int  # decoder positions of the traced batch (audio frames + BOS/EOS + delay)
    # After every operator: (live bytes other than gradients and weight copies, bytes of autocast's weight
    # copies, bytes of the gradients produced so far).
    timeline: list[tuple[int, int, int]]

    def peak(self, gradient_share: float = 1.0, copy_share: float = 1.0) -> int:
        """The high-water mark of live bytes, gradients counted at `gradient_share` and weight copies at
        `copy_share` (1/N: sharded over N)."""
        return int(
            max(other + copy_share * copies + gradient_share * gradients for other, copies, gradients in self.timeline)
        )


def fake_trainable(cfg: Config, mode: FakeTensorMode) -> torch.nn.Module:
    """The model as `training.step.build_trainable` sets it up, its parameters and buffers fake tensors of `mode`.

    It is built on the meta device, where peft can add its adapters (under FakeTensorMode, peft's move of
    each adapter to its base layer's device fails), then every tensor is replaced by a fake one.
    """
    family = family_of(cfg.model)
    with torch.device("meta"):
        model = family.architecture(cfg.model, Runtime.assumed(cfg, "cpu").attention)
    model = family.set_up_for_training(model, cfg, on_xla=False)
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
        self.timeline: list[tuple[int, int, int]] = []
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
        self.timeline.append((self.live - self.gradients - self.copies, self.copies, self.gradients))
        return out

    def count_gradient(self, param: torch.Tensor) -> None:
        self.gradients += param.grad.untyped_storage().nbytes()


def trace_step(cfg: Config) -> tuple[Trace, torch.nn.Module]:
    """Trace forward, loss and backward of one micro-batch of `cfg`'s shape without allocating it."""
    family = family_of(cfg.model)
    # Non-fake inputs allowed: a family's loss may hold small constant tensors (its weights), taken as they are.
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = fake_trainable(cfg, mode)
    batch = {key: mode.from_tensor(value) for key, value in family.synthetic_batch(cfg, model).items()}
    scorer = family.scorer(cfg.train, model)
    precision = planned_precision(cfg.train.mixed_precision)
    if precision in _AUTOCAST:
        # What Accelerate's prepare does to the forward: autocast inside, outputs converted to fp32 after.
        model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=_AUTOCAST[precision])(model.forward))
    params = list(model.parameters())
    tracker = _LiveBytes(params, list(model.buffers()) + list(batch.values()))
    for param in params:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(tracker.count_gradient)
    with mode, tracker:
        parts = scorer(model, batch, accuracy=False)
        loss = parts.weighted_sum / scorer.target_weight(batch)
        activations = tracker.live
        loss.backward()
    trace = Trace(activations, tracker.copies_peak, family.positions(batch), tracker.timeline)
    return trace, model
