"""The training step and what it needs, shared by the recipe (`train`), `dia-tpu bench` and `dia-tpu plan`:
the model set up for training, the optimizer, and one optimizer step over its micro-batches."""

from __future__ import annotations

import importlib.util

import torch
from accelerate import Accelerator

from dia_tpu.config import Config, ConfigError, TrainConfig
from dia_tpu.families import family_of
from dia_tpu.families.heads import Scorer
from dia_tpu.model.adapters import import_bitsandbytes_quietly
from dia_tpu.training.runtime import Runtime


def build_trainable(cfg: Config, runtime: Runtime) -> torch.nn.Module:
    """The model of the config's family set up for training: weights loaded, no generation cache, optional
    checkpointing, frozen parts and LoRA adapters, then (off XLA) compiled in place.

    `Module.compile` compiles the forward without wrapping the module, so state-dict names stay the
    model's own (no `_orig_mod.` prefixes in checkpoints). XLA traces and compiles graphs itself.
    """
    family = family_of(cfg.model)
    model = family.set_up_for_training(family.build(cfg.model, runtime.attention), cfg, runtime.on_xla)
    if runtime.compile:
        # Compiled backward kernels accumulate embedding gradients with parallel atomic adds, so two runs (a
        # straight one and a resumed one) differ in the last bits; deterministic mode has them use torch's own
        # ordered kernels there. The rest of the compiled step is unchanged.
        torch.use_deterministic_algorithms(True, warn_only=True)
        model.compile()
    return model


def check_optimizer(t: TrainConfig, runtime: Runtime) -> None:
    """Refuse, before any work, an optimizer this process cannot run."""
    if t.optimizer == "adamw_8bit" and runtime.on_xla:
        raise ConfigError("train.optimizer=adamw_8bit: bitsandbytes has no XLA (TPU) kernels; use adamw")
    if t.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.optimizer=adamw_8bit needs bitsandbytes: pip install 'dia-tpu[bnb]'")


def make_optimizer(t: TrainConfig, model: torch.nn.Module, runtime: Runtime) -> torch.optim.Optimizer:
    """AdamW from torch (its fused kernel where the runtime has it), or bitsandbytes' 8-bit AdamW (imported
    only when asked for; see `check_optimizer`). Only trainable parameters are given to it, in the groups of
    `group_settings`."""
    groups = [{"params": params, **settings} for params, settings in zip(_split(model), group_settings(t), strict=True)]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, fused=runtime.fused_optimizer)
    import_bitsandbytes_quietly()
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(groups)


def group_settings(t: TrainConfig) -> list[dict]:
    """What the config sets on each parameter group: matrices and embeddings decay, norms and biases do not."""
    common = {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    return [{**common, "weight_decay": t.weight_decay}, {**common, "weight_decay": 0.0}]


def _split(model: torch.nn.Module) -> tuple[list, list]:
    """The trainable parameters in the order of `group_settings`: matrices and embeddings, then vectors."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return decay, no_decay


def train_step(
    accelerator: Accelerator,
    model,
    optimizer,
    scheduler,
    batches: list[dict],
    scorer: Scorer,
    max_grad_norm: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over its micro-batches, shared by training and the benchmark.

    The loss is normalised by the target weight of the whole step on all processes, so k micro-batches of
    B equal one batch of kB. Returns this process's [weighted CE sum, target weight, audio frames] for the
    step, and the gradient norm before clipping (None when clipping is off).
    """
    denominator = sum(scorer.target_weight(b) for b in batches)
    if accelerator.num_processes > 1:
        # On XLA the reduction cuts the graph (a second, small execution per step): only when it matters.
        denominator = accelerator.reduce(denominator, "sum")
    # backward() divides by the accumulation steps and DDP averages over processes; undo both so the
    # step's gradient is that of (all weighted CE of the step) / (all target weight).
    scale = accelerator.gradient_accumulation_steps * accelerator.num_processes
    totals, grad_norm = [], None
    for batch in batches:
        with accelerator.accumulate(model):
            parts = scorer(model, batch, accuracy=False)
            accelerator.backward(parts.weighted_sum / denominator * scale)
            if accelerator.sync_gradients and max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad()
        totals.append(torch.stack([parts.weighted_sum.detach(), parts.total_weight, parts.frames]))
    return torch.stack(totals).sum(0), grad_norm
