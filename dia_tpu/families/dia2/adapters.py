"""LoRA for Dia2: adapters on the attention projections and gated MLPs of the backbone and the depformer
(peft), folded back into a plain `Dia2Model` whose weights keep upstream's names."""

from __future__ import annotations

import peft
import torch

from dia_tpu.families.dia2.model import Dia2Model

# The Linear layers that get adapters, by group (`model.lora.targets`): the attention projections (the backbone's,
# and the depformer's per-stage ones) and both stacks' MLPs. Embeddings, the text tables' projections and the
# heads stay as they are.
GROUPS = {
    "attention": (
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "self_attention.in_proj.",
        "self_attention.out_proj.",
    ),
    "mlp": ("mlp.wi", "mlp.wo"),
}


def lora_targets(model: Dia2Model, groups: tuple[str, ...] = ("attention", "mlp")) -> list[str]:
    """The full names of the Linear layers LoRA adapts in `groups`."""
    wanted = [part for group in groups for part in GROUPS[group]]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(part in name + "." for part in wanted)
    ]


def with_lora(
    model: Dia2Model, rank: int, alpha: float, dropout: float = 0.0, groups: tuple[str, ...] = ("attention", "mlp")
) -> peft.PeftModel:
    """`model` with LoRA adapters of `rank` on the layers of `groups`; only the adapters train."""
    targets = lora_targets(model, groups)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    return peft.get_peft_model(model, config)


def merged(model: torch.nn.Module) -> Dia2Model:
    """A plain Dia2 model with the adapters folded into its weights, or the model itself."""
    return model.merge_and_unload() if isinstance(model, peft.PeftModel) else model
