"""What trains: LoRA adapters through peft, and parts of Dia frozen by config.

`setup_training` is the one place that decides which parameters get gradients. A LoRA run wraps the model in a
`peft.PeftModel`; its adapter (and `modules_to_save`) weights are the only trainable ones, and the run's
checkpoints hold only those (see `trainable_state_dict`). peft is imported only when a rank is set.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from pathlib import Path

import torch
from transformers import DiaForConditionalGeneration

from dia_tpu.config import ConfigError, LoraSettings, ModelConfig
from dia_tpu.console import DropNote
from dia_tpu.errors import UserError

# Module names, relative to DiaForConditionalGeneration, that each LoRA target group covers.
_ATTENTION = re.compile(r"model\.(encoder|decoder)\.layers\.\d+\.(self|cross)_attention\.[qkvo]_proj")
_MLP = re.compile(r"model\.(encoder|decoder)\.layers\.\d+\.mlp\.(gate_up|down)_proj")
_HEAD = "logits_dense"


def setup_training(model: DiaForConditionalGeneration, cfg: ModelConfig) -> torch.nn.Module:
    """Freeze what `cfg.freeze` names, then add LoRA adapters when `cfg.lora.rank` is set.

    Returns the model to train: the same module, or a PeftModel around it. Gradient checkpointing, when
    wanted, must be enabled before this (peft wraps the checkpointed layers as they are).
    """
    freeze(model, cfg)
    if cfg.lora.rank:
        model = add_lora(model, cfg.lora)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model.freeze and model.lora leave no parameter to train")
    return model


def freeze(model: DiaForConditionalGeneration, cfg: ModelConfig) -> None:
    """Turn off gradients for the text encoder, the audio code embeddings, and the first N decoder layers."""
    spec = cfg.freeze
    decoder = model.model.decoder
    if spec.decoder_layers > len(decoder.layers):
        raise ConfigError(
            f"model.freeze.decoder_layers={spec.decoder_layers}, but the decoder has {len(decoder.layers)} layers"
        )
    parts = [model.model.encoder] if spec.text_encoder else []
    parts += [decoder.embeddings] if spec.audio_embeddings else []
    parts += list(decoder.layers[: spec.decoder_layers])
    for part in parts:
        part.requires_grad_(False)


def lora_target_modules(model: DiaForConditionalGeneration, lora: LoraSettings) -> list[str]:
    """The full names of the Linear layers that get adapters, from the groups and names in `lora.targets`."""
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    chosen = []
    for name in names:
        part = name.split(".")[1] if name.startswith("model.") else None
        for target in lora.targets:
            if target == "attention":
                hit = bool(_ATTENTION.fullmatch(name)) and part in lora.parts
            elif target == "mlp":
                hit = bool(_MLP.fullmatch(name)) and part in lora.parts
            elif target == "head":
                hit = name == _HEAD
            else:
                hit = name == target or name.endswith("." + target)
            if hit:
                chosen.append(name)
                break
    unmatched = [
        t
        for t in lora.targets
        if t not in ("attention", "mlp", "head") and not any(n == t or n.endswith("." + t) for n in names)
    ]
    if unmatched or not chosen:
        raise ConfigError(
            f"model.lora.targets {lora.targets} (parts {lora.parts}) match no Linear layer"
            + (f"; no module is named {unmatched}" if unmatched else "")
        )
    return chosen


def import_bitsandbytes_quietly() -> None:
    """Install the filter below before bitsandbytes is first imported (by peft or by the 8-bit optimizer)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_FOUR_BIT_NOTE)


# peft imports bitsandbytes when it is installed, and bitsandbytes warns on CPUs with bf16 support that its
# optional 4-bit kernel package is missing. dia_tpu uses no 4-bit layers.
_NO_FOUR_BIT_NOTE = DropNote("gemm_4bit_forward")


def add_lora(model: DiaForConditionalGeneration, lora: LoraSettings) -> torch.nn.Module:
    """Wrap `model` in a peft LoRA model; only the adapters and `modules_to_save` stay trainable."""
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora needs peft: pip install 'dia-tpu[peft]'")
    import_bitsandbytes_quietly()
    import peft

    known = {name.split(".")[-1] for name, _ in model.named_modules()} | {name for name, _ in model.named_modules()}
    missing = [m for m in lora.modules_to_save if m not in known]
    if missing:
        raise ConfigError(f"model.lora.modules_to_save: no module is named {missing}")
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_modules(model, lora),
        modules_to_save=list(lora.modules_to_save) or None,
    )
    with warnings.catch_warnings():
        # peft asks the model the older name of transformers' is_activation_checkpointing; the deprecation is
        # between the two libraries, nothing a user can act on.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return peft.get_peft_model(model, config)


def is_peft(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def dia_of(model: torch.nn.Module) -> DiaForConditionalGeneration:
    """The DiaForConditionalGeneration inside `model`: itself, or a PeftModel's base (adapters active)."""
    return model.get_base_model() if is_peft(model) else model


def trainable_names(model: torch.nn.Module) -> set[str]:
    """The names (as `model` gives them) of the parameters that train."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def check_trained_names(where: Path, saved: set[str], model: torch.nn.Module) -> None:
    """A checkpoint holding only trained weights must hold exactly `model`'s trainable parameters."""
    expected = trainable_names(model)
    missing, extra = sorted(expected - saved), sorted(saved - expected)
    if missing or extra:
        raise UserError(
            f"{where}: its saved weights do not match this run's trainable parameters (is model.lora or "
            f"model.freeze configured differently?): missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )


def trainable_state_dict(model: torch.nn.Module, state: dict) -> dict:
    """The entries of `state` (a state dict of `model`, names as `model` gives them) that are trained."""
    names = trainable_names(model)
    return {k: v for k, v in state.items() if k in names}


def merged(model: torch.nn.Module) -> DiaForConditionalGeneration:
    """A plain Dia model with the adapters folded into its weights (in place), or the model itself."""
    return model.merge_and_unload() if is_peft(model) else model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def merged_state_dict(model: torch.nn.Module) -> dict:
    """The weights of a plain Dia model equal to `model` with its adapters folded in, without touching it.

    For a PeftModel: each LoRA layer's base weight plus its delta, each `modules_to_save` copy under the
    wrapped module's name, every other tensor as it is. Used where a CPU copy of the live weights is needed.
    """
    if not is_peft(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base, adapter = model.get_base_model(), model.active_adapter
    out = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                prefix = f"{name}." if name else ""
                out[prefix + "weight"] = module.base_layer.weight + module.get_delta_weight(adapter)
    for key, value in base.state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue
        plain = key.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")
        out.setdefault(plain, value)
    return out
