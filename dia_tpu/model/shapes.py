"""A Dia's shape and starting point: stereo widening (9 -> 18 codebooks), a deliberate initialisation for
training from scratch, and the attention logit scale that goes with it.

transformers' Dia hard-codes `scaling = 1` in every attention module (the pretrained weights were trained
that way) and rebuilds modules with it on `from_pretrained`; a different scale is therefore recorded on the
config as `attention_scale` (kept in config.json) and re-applied after loading by `restore_attention_scale`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers import DiaConfig, DiaForConditionalGeneration
from transformers.initialization import no_init_weights
from transformers.models.dia.modeling_dia import DiaCrossAttention, DiaRMSNorm, DiaSelfAttention

from dia_tpu.errors import UserError

MONO_CHANNELS = 9
STEREO_CHANNELS = 2 * MONO_CHANNELS
# The two tensors with one block of `vocab_size` rows per codebook, in channel order (the embedding's
# per-channel offsets are c * vocab_size; the head's logits are viewed as [..., channel, vocab]).
CODE_EMBEDDING = "model.decoder.embeddings.embed.weight"
HEAD = "logits_dense.weight"
# Attention `o_proj` and MLP `down_proj` write into the residual stream: one residual branch each.
RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


def widen_to_stereo(
    model: DiaForConditionalGeneration, delay_pattern: list[int] | None = None
) -> DiaForConditionalGeneration:
    """A new 18-codebook model (left 9 + right 9) warm-started from a 9-codebook one.

    Every weight is copied. The right channel's output-head rows are copies of the left's, so both sides
    start with the mono predictions. The decoder input is the *sum* of the channels' code embeddings
    (`DiaMultiChannelEmbedding.forward` ends in `embeds.sum(dim=2)`), so copying the tables alone would
    double the input whenever left and right carry the same codes. Both halves of the table are therefore
    the mono table halved: identical left and right codes give the mono model's hidden states (up to float
    rounding of the sum), and hence, for channels c and 9 + c, its logits for channel c; different codes
    give the mean of the two sides' embeddings. Halving is exact in binary floating point.

    `delay_pattern` defaults to the mono pattern for both sides. The dtype, training mode, attention
    implementation, attention scale and generation config are kept. No generation-config field depends on
    the channel count: generation reads the channels and delays from the model config.
    """
    channels = model.config.decoder_config.num_channels
    if channels != MONO_CHANNELS:
        raise UserError(f"widen_to_stereo needs a {MONO_CHANNELS}-codebook model; this one has {channels}")
    config = stereo_config(model.config, delay_pattern)
    with no_init_weights():  # every weight is replaced just below
        wide = DiaForConditionalGeneration(config)
    # assign=True keeps the source dtype for the parameters while buffers (RoPE frequencies) stay fp32,
    # exactly as `from_pretrained(dtype=...)` leaves them.
    wide.load_state_dict(_stereo_state_dict(model), strict=True, assign=True)
    wide.generation_config = copy.deepcopy(model.generation_config)
    wide.set_attn_implementation(model.config._attn_implementation)
    restore_attention_scale(wide)
    return wide.train(model.training)


def _stereo_delays(mono: list[int], given: list[int] | None) -> list[int]:
    """The 18 delays of the widened model: `given`, or the mono pattern for each side."""
    pattern = list(mono) * 2 if given is None else list(given)
    bad = [d for d in pattern if not isinstance(d, int) or isinstance(d, bool) or d < 0]
    if len(pattern) != STEREO_CHANNELS or bad:
        raise UserError(
            f"a stereo delay pattern needs {STEREO_CHANNELS} non-negative integers (left "
            f"{MONO_CHANNELS} + right {MONO_CHANNELS}); got {len(pattern)}: {pattern}"
        )
    return pattern


def stereo_config(config: DiaConfig, delay_pattern: list[int] | None = None) -> DiaConfig:
    """A 9-codebook `config` widened: 18 decoder channels and `delay_pattern` (default: the mono pattern on
    both sides); every other field, `attention_scale` included, kept."""
    fields = config.to_dict()
    fields["decoder_config"]["num_channels"] = STEREO_CHANNELS
    fields["delay_pattern"] = _stereo_delays(config.delay_pattern, delay_pattern)
    return DiaConfig.from_dict(fields)


def _stereo_state_dict(model: DiaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The mono weights with the code embedding as [table / 2; table / 2] and the head as [head; head]."""
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state[CODE_EMBEDDING] = torch.cat([state[CODE_EMBEDDING]] * 2) / 2
    state[HEAD] = torch.cat([state[HEAD]] * 2)
    return state


def init_from_scratch(config: DiaConfig, seed: int, attention_scale: float | None) -> DiaForConditionalGeneration:
    """A Dia with seeded, deliberate initial weights, for training from scratch.

    transformers' `_init_weights` draws every Linear and Embedding weight from normal(0, initializer_range)
    (each stack with its own sub-config's, the head with the top config's) and sets norms to one, with no
    depth-dependent scaling. This does the same, except that the projections that end a residual branch
    (attention `o_proj`, MLP `down_proj`) get std / sqrt(branches in their stack): 2 per encoder layer and
    3 per decoder layer (self-attention, cross-attention, MLP). The residual stream's variance then stays
    near its starting value however deep the stack, instead of growing by one branch's worth per branch.

    The random draws use `seed` inside `torch.random.fork_rng`: the global RNG is left as it was.
    `attention_scale` None means 1 / sqrt(head_dim), the usual scale; pretrained Dia uses 1.0, with which
    training from scratch is known to diverge. A number is used as given. `config` is not modified.
    """
    config = copy.deepcopy(config)
    with no_init_weights():  # every parameter is drawn below, once
        model = DiaForConditionalGeneration(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _init_stack(model.model.encoder, config.encoder_config.initializer_range)
        _init_stack(model.model.decoder, config.decoder_config.initializer_range)
        _init_stack(model.logits_dense, config.initializer_range)
    set_attention_scale(model, _default_scale(model) if attention_scale is None else attention_scale)
    return model


@torch.no_grad()
def _init_stack(stack: nn.Module, std: float) -> None:
    """Initialise every parameter under `stack`; refuse a parameter of a kind it does not know."""
    branches = sum(name.endswith(RESIDUAL_OUTPUTS) for name, _ in stack.named_modules())
    residual_std = std / math.sqrt(branches) if branches else std
    done = set()
    for name, module in stack.named_modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=residual_std if name.endswith(RESIDUAL_OUTPUTS) else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, DiaRMSNorm):
            nn.init.ones_(module.weight)
        else:
            continue
        done.update(id(p) for p in module.parameters(recurse=False))
    missed = [name for name, p in stack.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"init_from_scratch has no rule for these parameters: {missed}")


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (DiaSelfAttention, DiaCrossAttention))]


def _default_scale(model: DiaForConditionalGeneration) -> float:
    """1 / sqrt(head_dim), when every attention module (encoder, decoder, cross) has the same head size."""
    dims = sorted({m.head_dim for m in _attention_modules(model)})
    if len(dims) != 1:
        raise UserError(
            f"attention_scale=None means 1/sqrt(head_dim), but the attention head sizes differ "
            f"({dims}); give model.attention_scale explicitly"
        )
    return 1.0 / math.sqrt(dims[0])


def set_attention_scale(model: DiaForConditionalGeneration, scale: float) -> None:
    """Multiply attention logits by `scale` in every self- and cross-attention module, and record it as
    `model.config.attention_scale` so that save_pretrained writes it to config.json."""
    if not scale > 0:
        raise UserError(f"attention scale must be > 0, got {scale}")
    for module in _attention_modules(model):
        module.scaling = float(scale)
    model.config.attention_scale = float(scale)


def restore_attention_scale(model: DiaForConditionalGeneration) -> None:
    """Re-apply a recorded `config.attention_scale` (from_pretrained rebuilds the modules with scale 1);
    a model without one keeps Dia's 1.0."""
    scale = getattr(model.config, "attention_scale", None)
    if scale is not None:
        set_attention_scale(model, scale)
