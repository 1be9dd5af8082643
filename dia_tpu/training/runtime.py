"""What the running process is, decided once right after the Accelerator exists and passed where it matters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType

from dia_tpu.config import Config
from dia_tpu.model.attention import attention_for


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    on_xla: bool  # torch_xla's device (TPU, or its CPU device): traced graphs, no host syncs in steps
    fsdp: bool  # FSDP2: each process holds a shard of the weights
    spmd: bool  # SPMD on XLA: one process drives every device of its host, each holding a shard of the weights
    attention: str  # the attention implementation the model runs with
    fused_optimizer: bool  # torch's fused AdamW kernel (CUDA and CPU; not XLA)
    compile: bool  # torch.compile the model in place (XLA compiles its own graphs)
    safe_weights: bool  # checkpoints hold the model as safetensors; on XLA torch's format (safetensors cannot
    # load onto XLA tensors)

    @classmethod
    def of(cls, state: PartialState, cfg: Config) -> Runtime:
        """The runtime of this process; `state` is the Accelerator (or PartialState) it runs under."""
        on_xla = state.distributed_type == DistributedType.XLA
        return cls.assumed(
            cfg,
            "xla" if on_xla else state.device.type,
            state.device,
            fsdp=state.distributed_type == DistributedType.FSDP,
        )

    @classmethod
    def assumed(cls, cfg: Config, kind: str, device: torch.device | None = None, fsdp: bool = False) -> Runtime:
        """The runtime training would have on a device of `kind` ("cuda", "xla" or "cpu"), for planning."""
        on_xla = kind == "xla"
        return cls(
            device=device if device is not None else torch.device("cpu"),
            on_xla=on_xla,
            fsdp=fsdp,
            spmd=on_xla and cfg.train.sharding == "fsdp",
            attention=attention_for(cfg.model, on_xla),
            fused_optimizer=cfg.train.fused_optimizer and not on_xla,
            compile=cfg.model.compile and not on_xla,
            safe_weights=not on_xla,
        )
