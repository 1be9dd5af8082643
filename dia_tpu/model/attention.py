"""The attention implementation Dia trains with, and the static-mask eager attention XLA needs."""

from __future__ import annotations

from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface
from transformers.models.dia.modeling_dia import eager_attention_forward as dia_eager_attention

from dia_tpu.config import ModelConfig

# Dia's eager attention with masks built without reading their values. transformers' mask helpers otherwise
# test `padding_mask.all()` to decide whether a mask can be skipped: a device-to-host sync on every forward,
# which on XLA stalls the lazy trace several times per step. Accelerate 1.15's bf16 autocast also fails inside
# SDPA on XLA, while eager attention works.
STATIC_ATTENTION = "dia_tpu_static_eager"


def _static_eager_mask(*args, **kwargs):
    kwargs["allow_is_bidirectional_skip"] = False
    return eager_mask(*args, **kwargs)


AttentionInterface.register(STATIC_ATTENTION, dia_eager_attention)
AttentionMaskInterface.register(STATIC_ATTENTION, _static_eager_mask)


def attention_for(cfg: ModelConfig, on_xla: bool) -> str:
    """The attention implementation to train with: "auto" is SDPA, or the static-mask eager one on XLA."""
    if cfg.attn_implementation == "auto":
        return STATIC_ATTENTION if on_xla else "sdpa"
    return STATIC_ATTENTION if cfg.attn_implementation == "static" else cfg.attn_implementation
