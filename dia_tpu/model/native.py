"""Native Nari Labs Dia checkpoints <-> transformers' `DiaForConditionalGeneration`.

Native kernels are DenseGeneral: q/k/v `[in, heads, head_dim]`, o `[heads, head_dim, out]`, `mlp.wi_fused`
`[in, 2, hidden]` (gate then up), `mlp.wo` `[hidden, out]`, the head `decoder.logits_dense` `[d, C, vocab]`, and
one `decoder.embeddings.i` table per channel. transformers holds each kernel as an `nn.Linear` weight: flatten
to `[in_total, out_total]`, transpose. The mapping is strict both ways and bit-exact: every key is consumed,
every expected key produced with its expected shape, dtypes kept as given.

A native checkpoint is a `config.json` beside one weights file. The config comes in two schemas, "v0.1" and
"0626" (`dia_tpu.model.native_config`). The weights file (`.pth` or `.safetensors`) may hold either layout, whatever
the config: the layout is read from the keys, never assumed from the schema.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DiaConfig

from dia_tpu.artifacts.native import COMPILE_PREFIX, DDP_PREFIX, NativeFormatError, clean_key

logger = logging.getLogger(__name__)


# The kinds of rule: a tensor copied under a new name, a DenseGeneral kernel, the per-channel embeddings.
COPY, DENSE, CHANNELS = "copy", "dense", "channels"


@dataclass(frozen=True)
class Rule:
    kind: str
    native: tuple[str, ...]  # native keys, in order (one, or one per channel)
    native_shape: tuple[int, ...]  # the shape of each native tensor
    hf: str
    hf_shape: tuple[int, ...]
    in_ndim: int = 0  # DENSE only: how many leading native dims are inputs


def _dense(native: str, hf: str, in_dims: tuple[int, ...], out_dims: tuple[int, ...]) -> Rule:
    n_in, n_out = torch.Size(in_dims).numel(), torch.Size(out_dims).numel()
    return Rule(DENSE, (native,), in_dims + out_dims, hf, (n_out, n_in), len(in_dims))


def _mlp(prefix: str, hidden: int, inter: int) -> list[Rule]:
    return [
        _dense(f"{prefix}.mlp.wi_fused.weight", f"model.{prefix}.mlp.gate_up_proj.weight", (hidden,), (2, inter)),
        _dense(f"{prefix}.mlp.wo.weight", f"model.{prefix}.mlp.down_proj.weight", (inter,), (hidden,)),
    ]


def _attention(prefix: str, hidden: int, kv_in: int, heads: int, kv_heads: int, head_dim: int) -> list[Rule]:
    def one(name: str, in_dims: tuple[int, ...], out_dims: tuple[int, ...]) -> Rule:
        return _dense(f"{prefix}.{name}.weight", f"model.{prefix}.{name}.weight", in_dims, out_dims)

    return [
        one("q_proj", (hidden,), (heads, head_dim)),
        one("k_proj", (kv_in,), (kv_heads, head_dim)),
        one("v_proj", (kv_in,), (kv_heads, head_dim)),
        one("o_proj", (heads, head_dim), (hidden,)),
    ]


def _norm(native: str, size: int) -> Rule:
    return Rule(COPY, (native,), (size,), f"model.{native}", (size,))


def layout(config: DiaConfig) -> list[Rule]:
    """Every tensor of a Dia with this config, as native key(s) -> transformers key with both shapes."""
    enc, dec = config.encoder_config, config.decoder_config
    e, d, channels, vocab = enc.hidden_size, dec.hidden_size, dec.num_channels, dec.vocab_size
    rules = [
        Rule(
            COPY,
            ("encoder.embedding.weight",),
            (enc.vocab_size, e),
            "model.encoder.embedding.weight",
            (enc.vocab_size, e),
        )
    ]
    for i in range(enc.num_hidden_layers):
        p = f"encoder.layers.{i}"
        rules += [_norm(f"{p}.pre_sa_norm.weight", e), _norm(f"{p}.post_sa_norm.weight", e)]
        kv_heads = enc.num_key_value_heads or enc.num_attention_heads
        rules += _attention(f"{p}.self_attention", e, e, enc.num_attention_heads, kv_heads, enc.head_dim)
        rules += _mlp(p, e, enc.intermediate_size)
    rules.append(_norm("encoder.norm.weight", e))
    embeddings = tuple(f"decoder.embeddings.{c}.weight" for c in range(channels))
    rules.append(Rule(CHANNELS, embeddings, (vocab, d), "model.decoder.embeddings.embed.weight", (channels * vocab, d)))
    for i in range(dec.num_hidden_layers):
        p = f"decoder.layers.{i}"
        rules += [_norm(f"{p}.{n}.weight", d) for n in ("pre_sa_norm", "pre_ca_norm", "pre_mlp_norm")]
        heads, kv_heads = dec.num_attention_heads, dec.num_key_value_heads
        rules += _attention(f"{p}.self_attention", d, d, heads, kv_heads, dec.head_dim)
        cross_heads, cross_kv = dec.cross_num_attention_heads, dec.cross_num_key_value_heads
        rules += _attention(f"{p}.cross_attention", d, dec.cross_hidden_size, cross_heads, cross_kv, dec.cross_head_dim)
        rules += _mlp(p, d, dec.intermediate_size)
    rules.append(_norm("decoder.norm.weight", d))
    rules.append(_dense("decoder.logits_dense.weight", "logits_dense.weight", (d,), (channels, vocab)))
    return rules


def dense_to_linear(kernel: Tensor, in_ndim: int) -> Tensor:
    """DenseGeneral `[*in, *out]` -> `nn.Linear` weight `[out_total, in_total]`."""
    n_in = torch.Size(kernel.shape[:in_ndim]).numel()
    return kernel.reshape(n_in, -1).T.contiguous()


def linear_to_dense(weight: Tensor, native_shape: tuple[int, ...]) -> Tensor:
    """`nn.Linear` weight `[out_total, in_total]` -> DenseGeneral `[*in, *out]`."""
    return weight.T.reshape(native_shape).contiguous()


def concat_channels(tables: list[Tensor]) -> Tensor:
    """Per-channel `[vocab, d]` tables -> one `[C * vocab, d]` table, channel c at rows `c*vocab ...`."""
    dtypes = {t.dtype for t in tables}
    if len(dtypes) > 1:  # torch.cat would promote silently
        raise NativeFormatError(f"decoder.embeddings.* mix dtypes {sorted(map(str, dtypes))}")
    return torch.cat(tables, dim=0)


def split_channels(table: Tensor, channels: int) -> list[Tensor]:
    """One `[C * vocab, d]` table -> C `[vocab, d]` tables, each with its own storage (so each saves alone)."""
    return [t.clone() for t in table.chunk(channels, dim=0)]


def check_state_dict(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise listing every unmapped, missing and mis-shaped key of `state` against `expected`."""
    unmapped = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} != {expected[k]}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != expected[k]
    )
    problems = [
        f"{name}: {items}"
        for name, items in (("unmapped", unmapped), ("missing", missing), ("mis-shaped", shapes))
        if items
    ]
    if problems:
        raise NativeFormatError(f"{what} does not match the config's layout; " + "; ".join(problems))


def native_to_hf(native: dict[str, Tensor], config: DiaConfig) -> dict[str, Tensor]:
    """A native state dict -> a `DiaForConditionalGeneration` state dict (strict, bit-exact, dtypes kept)."""
    rules = layout(config)
    check_state_dict(native, {k: r.native_shape for r in rules for k in r.native}, "native state dict")
    hf = {}
    for r in rules:
        if r.kind == COPY:
            hf[r.hf] = native[r.native[0]]
        elif r.kind == DENSE:
            hf[r.hf] = dense_to_linear(native[r.native[0]], r.in_ndim)
        else:
            hf[r.hf] = concat_channels([native[k] for k in r.native])
    check_state_dict(hf, {r.hf: r.hf_shape for r in rules}, "converted transformers state dict")
    return hf


def hf_to_native(hf: dict[str, Tensor], config: DiaConfig) -> dict[str, Tensor]:
    """A `DiaForConditionalGeneration` state dict -> a native one (strict, bit-exact, dtypes kept)."""
    rules = layout(config)
    check_state_dict(hf, {r.hf: r.hf_shape for r in rules}, "transformers state dict")
    native = {}
    for r in rules:
        if r.kind == COPY:
            native[r.native[0]] = hf[r.hf]
        elif r.kind == DENSE:
            native[r.native[0]] = linear_to_dense(hf[r.hf], r.native_shape)
        else:
            native.update(zip(r.native, split_channels(hf[r.hf], len(r.native)), strict=True))
    check_state_dict(native, {k: r.native_shape for r in rules for k in r.native}, "converted native state dict")
    return native


def clean_native_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip `_orig_mod.` (anywhere) and a leading `module.` from every key, logging how many changed."""
    cleaned = {}
    for key, tensor in state.items():
        new = clean_key(key)
        if new in cleaned:
            raise NativeFormatError(f"{key!r} and another key both clean to {new!r}")
        cleaned[new] = tensor
    changed = sum(old != new for old, new in zip(state, cleaned, strict=True))
    if changed:
        logger.info(
            "Stripped %r/%r wrappers from %d of %d native keys", COMPILE_PREFIX, DDP_PREFIX, changed, len(state)
        )
    return cleaned
