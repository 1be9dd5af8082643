"""FSDP2 on GPUs and CPU processes (`train.sharding: fsdp` off XLA): torch's `fully_shard` through Accelerate's
plugin, each of the model family's repeated layers a unit of its own (Dia: encoder and decoder layers; Dia2:
backbone and depformer layers), so a process holds 1/N of the weights, gradients and AdamW state and gathers
one layer's weights at a time.

    accelerate launch --multi_gpu --num_processes 4 dia_tpu/finetune_acc_tpu.py --config C train.sharding=fsdp
    accelerate launch --config_file configs/accelerate/fsdp.yaml dia_tpu/finetune_acc_tpu.py --config C

Either way dia_tpu builds the plugin (`fsdp_plugin`); what the launcher sets (`--use_fsdp`, the FSDP_* of an
Accelerate config: offloading, resharding after forward) fills the fields dia_tpu leaves open. Checkpoints are
sharded (torch's distributed checkpoint: every process writes its own part, `pytorch_model_fsdp_0/` and
`optimizer_0/`) and resume on any process count; the export at the end is the full model, gathered.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from dia_tpu.config import Config, ConfigError
from dia_tpu.families import family_of

# Where Accelerate's sharded checkpoint keeps the model (torch's distributed checkpoint format).
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"


def launcher_asks_for_fsdp() -> bool:
    """Whether `accelerate launch` was given --use_fsdp (or an Accelerate config with FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(cfg: Config) -> FullyShardedDataParallelPlugin | None:
    """The FSDP2 plugin for the Accelerator when the config or the launcher asks for sharding; None otherwise."""
    if cfg.train.sharding != "fsdp" and not launcher_asks_for_fsdp():
        return None
    if cfg.model.lora.rank:
        raise ConfigError(
            "train.sharding=fsdp with model.lora: not supported (Accelerate's FSDP2 checkpoints of "
            "a peft model keep the frozen base sharded beside the adapters); LoRA trains a small share "
            "of the weights, so train it with train.sharding=none, or shard a full fine-tune"
        )
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise ConfigError(
            f"FSDP version {os.environ['FSDP_VERSION']} (from the launcher): dia_tpu shards with FSDP2; "
            "launch with --fsdp_version 2, or without --use_fsdp and with train.sharding=fsdp"
        )
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise ConfigError(
            "FSDP activation checkpointing (from the launcher) renames every layer's weights; set "
            "model.gradient_checkpointing=true instead and launch without it"
        )
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        # The family's repeated layers, whose weights are gathered one layer at a time.
        transformer_cls_names_to_wrap=list(family_of(cfg.model).shard_units),
        # Every process writes its own part; a resume may run on another number of processes.
        state_dict_type="SHARDED_STATE_DICT",
        activation_checkpointing=False,  # model.gradient_checkpointing checkpoints the same layers
    )


def engage_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin | None) -> None:
    """Workaround for Accelerate 1.10-1.15: with CPU processes (gloo) its state reads MULTI_CPU and drops the FSDP
    plugin without a word, so training would run as plain data parallel. torch's FSDP2 itself runs on CPU with
    gloo; here the state is told it is FSDP, which is all Accelerate's FSDP2 preparation, checkpointing and
    gathering look at. Only for CPU processes: on GPUs Accelerate engages FSDP itself."""
    if plugin is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    state = accelerator.state
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = plugin


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements of the weights this process holds, elements of the whole model): a sharded model's DTensor
    parameters hold their local shard; anything else holds all of itself."""
    held = total = 0
    for param in model.parameters():
        total += param.numel()
        held += param.to_local().numel() if hasattr(param, "to_local") else param.numel()
    return held, total
