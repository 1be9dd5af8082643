"""LoRA for Dia2: adapters on the attention projections and gated MLPs of the backbone and the depformer
(peft), folded back into a plain `Dia2Model` whose weights keep upstream's names."""

from __future__ import annotations

import peft
import torch

from dia_tpu.families.dia2.model import Dia2Model

# The Linear layers that get adapters, by where they sit: the backbone's attention, the depformer's per-stage
# projections, and both stacks' MLPs. Embeddings, the text tables' projections and the heads stay as they are.
LORA_TARGETS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.wi", "mlp.wo")
LORA_STAGE_TARGETS = ("self_attention.in_proj.", "self_attention.out_proj.")


def lora_targets(model: Dia2Model) -> list[str]:
    """The full names of the Linear layers LoRA adapts."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (name.endswith(LORA_TARGETS) or any(target in name for target in LORA_STAGE_TARGETS))
    ]


def with_lora(model: Dia2Model, rank: int, alpha: float, dropout: float = 0.0) -> peft.PeftModel:
    """`model` with LoRA adapters of `rank`; only the adapters train."""
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(model))
    return peft.get_peft_model(model, config)


def merged(model: torch.nn.Module) -> Dia2Model:
    """A plain Dia2 model with the adapters folded into its weights, or the model itself."""
    return model.merge_and_unload() if isinstance(model, peft.PeftModel) else model
