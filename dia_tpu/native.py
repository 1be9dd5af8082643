"""Native Nari Labs Dia checkpoints (`dia-v0_1.pth`) <-> transformers' `DiaForConditionalGeneration`.

Native kernels are DenseGeneral: q/k/v `[in, heads, head_dim]`, o `[heads, head_dim, out]`, `mlp.wi_fused`
`[in, 2, hidden]` (gate then up), `mlp.wo` `[hidden, out]`, the head `decoder.logits_dense` `[d, C, vocab]`, and
one `decoder.embeddings.i` table per channel. transformers holds each kernel as an `nn.Linear` weight: flatten
to `[in_total, out_total]`, transpose. The mapping is strict both ways and bit-exact: every key is consumed,
every expected key produced with its expected shape, dtypes kept as given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import DiaConfig

logger = logging.getLogger(__name__)

# The kinds of rule: a tensor copied under a new name, a DenseGeneral kernel, the per-channel embeddings.
COPY, DENSE, CHANNELS = "copy", "dense", "channels"


class NativeFormatError(ValueError):
    """A state dict that does not match the layout the config implies."""


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
    rules = [Rule(COPY, ("encoder.embedding.weight",), (enc.vocab_size, e), "model.encoder.embedding.weight",
                  (enc.vocab_size, e))]  # fmt: skip
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
    """One `[C * vocab, d]` table -> C contiguous `[vocab, d]` tables."""
    return [t.contiguous() for t in table.chunk(channels, dim=0)]


def _check(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise listing every unmapped, missing and mis-shaped key of `state` against `expected`."""
    unmapped = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} != {expected[k]}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != expected[k]
    )
    problems = [f"{name}: {items}" for name, items in (("unmapped", unmapped), ("missing", missing),
                                                        ("mis-shaped", shapes)) if items]  # fmt: skip
    if problems:
        raise NativeFormatError(f"{what} does not match the config's layout; " + "; ".join(problems))


def native_to_hf(native: dict[str, Tensor], config: DiaConfig) -> dict[str, Tensor]:
    """A native state dict -> a `DiaForConditionalGeneration` state dict (strict, bit-exact, dtypes kept)."""
    rules = layout(config)
    _check(native, {k: r.native_shape for r in rules for k in r.native}, "native state dict")
    hf = {}
    for r in rules:
        if r.kind == COPY:
            hf[r.hf] = native[r.native[0]]
        elif r.kind == DENSE:
            hf[r.hf] = dense_to_linear(native[r.native[0]], r.in_ndim)
        else:
            hf[r.hf] = concat_channels([native[k] for k in r.native])
    _check(hf, {r.hf: r.hf_shape for r in rules}, "converted transformers state dict")
    return hf


def hf_to_native(hf: dict[str, Tensor], config: DiaConfig) -> dict[str, Tensor]:
    """A `DiaForConditionalGeneration` state dict -> a native one (strict, bit-exact, dtypes kept)."""
    rules = layout(config)
    _check(hf, {r.hf: r.hf_shape for r in rules}, "transformers state dict")
    native = {}
    for r in rules:
        if r.kind == COPY:
            native[r.native[0]] = hf[r.hf]
        elif r.kind == DENSE:
            native[r.native[0]] = linear_to_dense(hf[r.hf], r.native_shape)
        else:
            native.update(zip(r.native, split_channels(hf[r.hf], len(r.native)), strict=True))
    _check(native, {k: r.native_shape for r in rules for k in r.native}, "converted native state dict")
    return native


# Wrappers that community checkpoints carry: torch.compile's module attribute, DDP's leading `module.`.
COMPILE_PREFIX, DDP_PREFIX = "_orig_mod.", "module."


def clean_native_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip `_orig_mod.` (anywhere) and a leading `module.` from every key, logging how many changed."""
    cleaned = {}
    for key, tensor in state.items():
        new = key.replace(COMPILE_PREFIX, "").removeprefix(DDP_PREFIX)
        if new in cleaned:
            raise NativeFormatError(f"{key!r} and another key both clean to {new!r}")
        cleaned[new] = tensor
    changed = sum(old != new for old, new in zip(state, cleaned, strict=True))
    if changed:
        logger.info("Stripped %r/%r wrappers from %d of %d native keys", COMPILE_PREFIX, DDP_PREFIX, changed,
                    len(state))  # fmt: skip
    return cleaned


def load_native(path: str | Path) -> dict[str, Tensor]:
    """A native `.pth` state dict on CPU, unwrapped from a `{"model": ...}` / `{"state_dict": ...}` holder."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for holder in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(holder), dict):
            logger.info("%s: using the state dict under %r", path, holder)
            state = state[holder]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise NativeFormatError(f"{path}: not a state dict of tensors")
    return state


# The native v0.1 `config.json` (nari-labs/Dia-1.6B): keys read per section, and the rest it may carry that
# do not shape the weights (dropout, storage dtype, the training recipe), which are accepted and dropped.
_NATIVE_KEYS = {
    "encoder": set("n_layer n_embd n_hidden n_head head_dim".split()),
    "decoder": set(
        "n_layer n_embd n_hidden gqa_query_heads kv_heads gqa_head_dim cross_query_heads cross_head_dim".split()
    ),
    "model": set(
        "encoder decoder src_vocab_size tgt_vocab_size normalization_layer_epsilon rope_min_timescale "
        "rope_max_timescale dropout weight_dtype".split()
    ),
    "data": set(
        "text_length audio_length channels text_pad_value audio_eos_value audio_pad_value audio_bos_value "
        "delay_pattern".split()
    ),
}


def native_config_to_hf(native: dict) -> DiaConfig:
    """A native v0.1 `config.json` dict -> `DiaConfig`; unknown keys or an unrepresentable rope are errors."""
    model, data = native["model"], native["data"]
    enc, dec = model["encoder"], model["decoder"]
    unknown = [f"{name}.{k}" for name, section in (("model.encoder", enc), ("model.decoder", dec), ("model", model),
               ("data", data)) for k in sorted(set(section) - _NATIVE_KEYS[name.split(".")[-1]])]  # fmt: skip
    if unknown:
        raise NativeFormatError(f"native config has keys this converter does not know: {unknown}")
    if model.get("rope_min_timescale", 1) != 1:  # transformers derives rope from one base, native from min and max
        raise NativeFormatError(f"rope_min_timescale={model['rope_min_timescale']} has no transformers equivalent")
    rope = {"rope_type": "default", "rope_theta": float(model.get("rope_max_timescale", 10_000))}
    eps = model.get("normalization_layer_epsilon", 1e-5)
    encoder = dict(
        num_hidden_layers=enc["n_layer"], hidden_size=enc["n_embd"], intermediate_size=enc["n_hidden"],
        num_attention_heads=enc["n_head"], num_key_value_heads=enc["n_head"], head_dim=enc["head_dim"],
        vocab_size=model["src_vocab_size"], norm_eps=eps, max_position_embeddings=data["text_length"],
        rope_parameters=rope,
    )  # fmt: skip
    decoder = dict(
        num_hidden_layers=dec["n_layer"], hidden_size=dec["n_embd"], intermediate_size=dec["n_hidden"],
        num_attention_heads=dec["gqa_query_heads"], num_key_value_heads=dec["kv_heads"], head_dim=dec["gqa_head_dim"],
        cross_num_attention_heads=dec["cross_query_heads"], cross_num_key_value_heads=dec["cross_query_heads"],
        cross_head_dim=dec["cross_head_dim"], cross_hidden_size=enc["n_embd"], vocab_size=model["tgt_vocab_size"],
        num_channels=data["channels"], norm_eps=eps, max_position_embeddings=data["audio_length"],
        rope_parameters=dict(rope), pad_token_id=data["audio_pad_value"], eos_token_id=data["audio_eos_value"],
        bos_token_id=data["audio_bos_value"],
    )  # fmt: skip
    return DiaConfig(encoder_config=encoder, decoder_config=decoder, norm_eps=eps,
                     delay_pattern=list(data["delay_pattern"]))  # fmt: skip


def hf_config_to_native(config: DiaConfig) -> dict:
    """`DiaConfig` -> a native v0.1 `config.json` dict; configs native Dia cannot express are errors."""
    enc, dec = config.encoder_config, config.decoder_config
    problems = [
        msg
        for bad, msg in (
            (enc.num_key_value_heads not in (None, enc.num_attention_heads), "encoder key/value heads != heads"),
            (dec.cross_num_key_value_heads != dec.cross_num_attention_heads, "cross key/value heads != heads"),
            (dec.cross_hidden_size != enc.hidden_size, "cross_hidden_size != encoder hidden_size"),
            (enc.norm_eps != dec.norm_eps, "encoder and decoder norm_eps differ"),
            (enc.rope_parameters != dec.rope_parameters, "encoder and decoder rope differ"),
            (dec.rope_parameters.get("rope_type", "default") != "default", "rope_type is not default"),
        )
        if bad
    ]
    if problems:
        raise NativeFormatError(f"native Dia cannot express this config: {problems}")
    encoder = {"n_layer": enc.num_hidden_layers, "n_embd": enc.hidden_size, "n_hidden": enc.intermediate_size,
               "n_head": enc.num_attention_heads, "head_dim": enc.head_dim}  # fmt: skip
    decoder = {"n_layer": dec.num_hidden_layers, "n_embd": dec.hidden_size, "n_hidden": dec.intermediate_size,
               "gqa_query_heads": dec.num_attention_heads, "kv_heads": dec.num_key_value_heads,
               "gqa_head_dim": dec.head_dim, "cross_query_heads": dec.cross_num_attention_heads,
               "cross_head_dim": dec.cross_head_dim}  # fmt: skip
    model = {"encoder": encoder, "decoder": decoder, "src_vocab_size": enc.vocab_size,
             "tgt_vocab_size": dec.vocab_size, "normalization_layer_epsilon": enc.norm_eps, "rope_min_timescale": 1,
             "rope_max_timescale": dec.rope_parameters["rope_theta"]}  # fmt: skip
    data = {"text_length": enc.max_position_embeddings, "audio_length": dec.max_position_embeddings,
            "channels": dec.num_channels, "audio_eos_value": dec.eos_token_id, "audio_pad_value": dec.pad_token_id,
            "audio_bos_value": dec.bos_token_id, "delay_pattern": list(config.delay_pattern)}  # fmt: skip
    return {"version": "0.1", "model": model, "data": data}
