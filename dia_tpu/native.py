"""Native Nari Labs Dia checkpoints <-> transformers' `DiaForConditionalGeneration`.

Native kernels are DenseGeneral: q/k/v `[in, heads, head_dim]`, o `[heads, head_dim, out]`, `mlp.wi_fused`
`[in, 2, hidden]` (gate then up), `mlp.wo` `[hidden, out]`, the head `decoder.logits_dense` `[d, C, vocab]`, and
one `decoder.embeddings.i` table per channel. transformers holds each kernel as an `nn.Linear` weight: flatten
to `[in_total, out_total]`, transpose. The mapping is strict both ways and bit-exact: every key is consumed,
every expected key produced with its expected shape, dtypes kept as given.

A native checkpoint is a `config.json` beside one weights file. The config comes in two schemas: "v0.1"
(`dia-v0_1.pth`'s, sections `model` and `data`) and "0626" (Dia-1.6B-0626's, flat, transformers 4.53's names).
The weights file (`.pth` or `.safetensors`) may hold either layout, whatever the config: the layout is read
from the keys, never assumed from the schema.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import safetensors
import safetensors.torch
import torch
import transformers
from torch import Tensor
from transformers import DiaConfig, DiaForConditionalGeneration

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
    """One `[C * vocab, d]` table -> C `[vocab, d]` tables, each with its own storage (so each saves alone)."""
    return [t.clone() for t in table.chunk(channels, dim=0)]


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


def _clean_key(key: str) -> str:
    return key.replace(COMPILE_PREFIX, "").removeprefix(DDP_PREFIX)


def clean_native_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip `_orig_mod.` (anywhere) and a leading `module.` from every key, logging how many changed."""
    cleaned = {}
    for key, tensor in state.items():
        new = _clean_key(key)
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


V01, V0626 = "v0.1", "0626"
SCHEMAS = (V01, V0626)

# The native v0.1 `config.json` (nari-labs/Dia-1.6B): keys read per section, and the rest it may carry that
# do not shape the weights (dropout, storage dtype, the training recipe), which are accepted and dropped.
_V01_KEYS = {
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

# The 0626 `config.json` (nari-labs/Dia-1.6B-0626): a dump of the native pydantic config, whose names are
# transformers 4.53's. Every key is required; architectures, torch_dtype and transformers_version describe the
# file rather than the model and are read and dropped.
_0626_SUB = set(
    "head_dim hidden_act hidden_size initializer_range intermediate_size max_position_embeddings model_type norm_eps "
    "num_attention_heads num_hidden_layers num_key_value_heads rope_scaling rope_theta vocab_size".split()
)
_0626_KEYS = {
    "encoder_config": _0626_SUB,
    "decoder_config": _0626_SUB
    | set("cross_head_dim cross_hidden_size cross_num_attention_heads cross_num_key_value_heads num_channels".split()),
    "": set(
        "architectures bos_token_id decoder_config delay_pattern encoder_config eos_token_id initializer_range "
        "is_encoder_decoder model_type norm_eps pad_token_id torch_dtype transformers_version".split()
    ),
}
# Sub-config keys transformers spells differently (rope) or sets itself (model_type); the rest pass through.
_0626_NOT_HF = {"model_type", "rope_scaling", "rope_theta"}
# Values the native code hard-codes whatever the file says: any other would describe a model it does not run.
_0626_FIXED = {
    ("", "model_type"): "dia",
    ("", "is_encoder_decoder"): True,
    ("encoder_config", "model_type"): "dia_encoder",
    ("decoder_config", "model_type"): "dia_decoder",
    ("encoder_config", "hidden_act"): "silu",
    ("decoder_config", "hidden_act"): "silu",
    ("encoder_config", "rope_scaling"): None,
    ("decoder_config", "rope_scaling"): None,
}


def native_config_to_hf(native: dict) -> DiaConfig:
    """A native `config.json` dict of either schema -> `DiaConfig`; an unrecognised schema, unknown or missing
    keys and values native Dia does not implement (rope scaling, another activation) are errors naming them."""
    return _v01_to_hf(native) if _schema(native) == V01 else _0626_to_hf(native)


def _schema(native: object) -> str:
    """The schema of a native config ("v0.1" or "0626"), told apart by its top-level keys."""
    if _is_v01(native):
        return V01
    if isinstance(native, dict) and {"encoder_config", "decoder_config"} <= native.keys():
        return V0626
    found = sorted(native) if isinstance(native, dict) else type(native).__name__
    raise NativeFormatError(
        "not a native Dia config: expected 'model' and 'data' (v0.1) or 'encoder_config' and 'decoder_config' "
        f"(0626), found {found}"
    )


def _is_v01(native: object) -> bool:
    return isinstance(native, dict) and {"model", "data"} <= native.keys()


def _v01_to_hf(native: dict) -> DiaConfig:
    model, data = native["model"], native["data"]
    enc, dec = model["encoder"], model["decoder"]
    unknown = [f"{name}.{k}" for name, section in (("model.encoder", enc), ("model.decoder", dec), ("model", model),
               ("data", data)) for k in sorted(set(section) - _V01_KEYS[name.split(".")[-1]])]  # fmt: skip
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


def _0626_problems(native: dict) -> list[str]:
    """Every unknown, missing or unsupported key of a 0626 config, by its dotted name."""
    sections = {"": native, "encoder_config": native["encoder_config"], "decoder_config": native["decoder_config"]}

    def dotted(section: str, key: str) -> str:
        return f"{section}.{key}" if section else key

    problems = []
    for name, section in sections.items():
        problems += [f"unknown {dotted(name, k)}" for k in sorted(set(section) - _0626_KEYS[name])]
        problems += [f"missing {dotted(name, k)}" for k in sorted(_0626_KEYS[name] - set(section))]
    for (name, key), value in _0626_FIXED.items():
        if key in sections[name] and sections[name][key] != value:
            problems.append(f"{dotted(name, key)}={sections[name][key]!r} (native Dia implements only {value!r})")
    channels, delays = native["decoder_config"].get("num_channels"), native.get("delay_pattern", [])
    if channels is not None and len(delays) != channels:
        problems.append(f"delay_pattern has {len(delays)} entries for decoder_config.num_channels={channels}")
    return problems


def _0626_to_hf(native: dict) -> DiaConfig:
    problems = _0626_problems(native)
    if problems:
        raise NativeFormatError(f"native 0626 config: {problems}")

    def sub(section: dict) -> dict:
        rope = {"rope_type": "default", "rope_theta": float(section["rope_theta"])}
        return {k: v for k, v in section.items() if k not in _0626_NOT_HF} | {"rope_parameters": rope}

    tokens = {k: native[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}  # transformers: on the decoder
    encoder, decoder = sub(native["encoder_config"]), sub(native["decoder_config"]) | tokens
    return DiaConfig(
        encoder_config=encoder,
        decoder_config=decoder,
        norm_eps=native["norm_eps"],
        initializer_range=native["initializer_range"],
        delay_pattern=list(native["delay_pattern"]),
    )


def hf_config_to_native(config: DiaConfig, schema: str = V01) -> dict:
    """`DiaConfig` -> a native `config.json` dict in `schema` ("v0.1" or "0626"); a config that schema's native
    code cannot run is an error listing every reason."""
    if schema not in SCHEMAS:
        raise NativeFormatError(f"unknown native config schema {schema!r}; expected one of {SCHEMAS}")
    problems = _inexpressible(config, schema)
    if problems:
        raise NativeFormatError(f"native Dia ({schema} config) cannot express this config: {problems}")
    return _hf_to_v01(config) if schema == V01 else _hf_to_0626(config)


def _inexpressible(config: DiaConfig, schema: str) -> list[str]:
    """What in `config` the native code of `schema` has no setting for. Both hard-code SiLU, plain rope,
    unscaled attention logits and cross-attention over the encoder's width; v0.1 also has one eps and one rope
    for both stacks, and grouped key/value heads only in the decoder's self-attention."""
    enc, dec = config.encoder_config, config.decoder_config
    checks = [
        (dec.cross_hidden_size != enc.hidden_size, "cross_hidden_size != encoder hidden_size"),
        ({enc.hidden_act, dec.hidden_act} != {"silu"}, "hidden_act is not silu"),
        (not (_plain_rope(enc) and _plain_rope(dec)), "rope is not the default rope_type with rope_theta alone"),
        # Native attention never scales its logits (Dia's 1.0); a scratch run's own scale would be lost.
        (getattr(config, "attention_scale", 1.0) != 1.0, f"attention_scale={getattr(config, 'attention_scale', 1.0)} "
                                                          "(native Dia attention uses 1.0)"),
    ]
    if schema == V01:
        checks += [
            (enc.num_key_value_heads not in (None, enc.num_attention_heads), "encoder key/value heads != heads"),
            (dec.cross_num_key_value_heads != dec.cross_num_attention_heads, "cross key/value heads != heads"),
            (enc.norm_eps != dec.norm_eps, "encoder and decoder norm_eps differ"),
            (enc.rope_parameters != dec.rope_parameters, "encoder and decoder rope differ"),
        ]
    return [msg for bad, msg in checks if bad]


_PLAIN_ROPE_KEYS = {"rope_type", "rope_theta"}


def _plain_rope(sub_config) -> bool:
    rope = sub_config.rope_parameters or {}
    return "rope_theta" in rope and rope.get("rope_type", "default") == "default" and set(rope) <= _PLAIN_ROPE_KEYS


def _hf_to_v01(config: DiaConfig) -> dict:
    enc, dec = config.encoder_config, config.decoder_config
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


def _hf_to_0626(config: DiaConfig) -> dict:
    enc, dec = config.encoder_config, config.decoder_config

    def sub(sub_config, keys: set[str]) -> dict:
        out = {k: getattr(sub_config, k) for k in keys - _0626_NOT_HF}
        out["num_key_value_heads"] = sub_config.num_key_value_heads or sub_config.num_attention_heads
        out |= {"model_type": sub_config.model_type, "rope_scaling": None,
                "rope_theta": sub_config.rope_parameters["rope_theta"]}  # fmt: skip
        return dict(sorted(out.items()))

    return {
        "architectures": ["DiaForConditionalGeneration"],
        "bos_token_id": dec.bos_token_id,
        "decoder_config": sub(dec, _0626_KEYS["decoder_config"]),
        "delay_pattern": list(config.delay_pattern),
        "encoder_config": sub(enc, _0626_KEYS["encoder_config"]),
        "eos_token_id": dec.eos_token_id,
        "initializer_range": config.initializer_range,
        "is_encoder_decoder": True,
        "model_type": "dia",
        "norm_eps": config.norm_eps,
        "pad_token_id": dec.pad_token_id,
        "torch_dtype": _dtype_name(config.dtype),
        "transformers_version": transformers.__version__,
    }


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


# Where a checkpoint's files are: `config.json` beside one weights file.
CONFIG_NAME, SAFETENSORS_NAME = "config.json", "model.safetensors"
WEIGHTS_SUFFIXES = (".pth", ".safetensors")
SAVE_NAMES = {V01: "dia-v0_1.pth", V0626: "model.pth"}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
NATIVE, TRANSFORMERS = "native", "transformers"


def read_native(source: str | Path, weights_name: str | None = None) -> tuple[DiaConfig, dict[str, Tensor]]:
    """(config, transformers-layout state dict) from a native checkpoint: a weights file with `config.json`
    beside it, a folder holding both, or a hub id (org/name, downloaded). Weights in the native layout are
    converted; weights already in transformers' layout are checked as strictly and returned as they are."""
    config_path, weights_path = _locate(source, weights_name)
    config = _read_config(config_path)
    return config, _as_transformers(_read_weights(weights_path), config, weights_path)


def _locate(source: str | Path, weights_name: str | None) -> tuple[Path, Path]:
    """(config.json, weights file) of `source`; a hub id's are downloaded first."""
    path = Path(source)
    if path.is_file():
        if weights_name is not None:
            raise NativeFormatError(f"{path} is a file: weights_name picks a file in a folder or hub repository")
        weights = path
    elif path.is_dir():
        weights = _folder_weights(path, weights_name)
    elif _HUB_ID.fullmatch(str(source)):
        return _download(str(source), weights_name)
    else:
        raise NativeFormatError(f"{source}: no such file or folder, and not a hub id (org/name)")
    if weights.suffix not in WEIGHTS_SUFFIXES:
        raise NativeFormatError(f"{weights}: not a weights file (expected one of {WEIGHTS_SUFFIXES})")
    config = weights.parent / CONFIG_NAME
    if not config.is_file():
        raise NativeFormatError(f"{weights.parent}: no {CONFIG_NAME} beside {weights.name}")
    return config, weights


def _folder_weights(folder: Path, weights_name: str | None) -> Path:
    """The folder's one `*.pth` or `model.safetensors`, or `weights_name` when given."""
    if weights_name is not None:
        if not (folder / weights_name).is_file():
            raise NativeFormatError(f"{folder}: no weights file {weights_name!r}")
        return folder / weights_name
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_weights_name(p.name))
    if len(found) == 1:
        return folder / found[0]
    problem = f"several weights files {found}; pass weights_name to pick one" if found else "no weights file"
    raise NativeFormatError(f"{folder}: {problem} (expected one *.pth or {SAFETENSORS_NAME})")


def _is_weights_name(name: str) -> bool:
    return name.endswith(".pth") or name == SAFETENSORS_NAME


def _download(repo_id: str, weights_name: str | None) -> tuple[Path, Path]:
    """Fetch a hub repository's config.json and weights file (a single `.pth`, else `model.safetensors`)."""
    if weights_name is None:
        weights_name = _hub_weights(repo_id, huggingface_hub.HfApi().list_repo_files(repo_id))
    logger.info("Downloading %s and %s from %s", CONFIG_NAME, weights_name, repo_id)
    config = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=CONFIG_NAME)
    weights = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=weights_name)
    return Path(config), Path(weights)


def _hub_weights(repo_id: str, files: list[str]) -> str:
    pth = sorted(f for f in files if f.endswith(".pth"))
    if len(pth) == 1:
        return pth[0]
    if SAFETENSORS_NAME in files:
        return SAFETENSORS_NAME
    problem = f"several .pth files {pth}; pass weights_name to pick one" if pth else "no weights file"
    raise NativeFormatError(f"{repo_id}: {problem} (expected one *.pth or {SAFETENSORS_NAME})")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NativeFormatError(f"{path}: not JSON ({err})") from err


def _read_config(path: Path) -> DiaConfig:
    native = _read_json(path)
    try:
        return native_config_to_hf(native)
    except NativeFormatError as err:
        raise NativeFormatError(f"{path}: {err}") from err


def _read_weights(path: Path) -> dict[str, Tensor]:
    """A `.safetensors` or `.pth` state dict on CPU, with training wrappers stripped from its keys."""
    state = safetensors.torch.load_file(path) if path.suffix == ".safetensors" else load_native(path)
    return clean_native_keys(state)


def _key_layout(keys: Iterable[str]) -> str | None:
    """The layout ("native" or "transformers") of a state dict's cleaned keys, from where they live: native
    Dia's top modules are `encoder` and `decoder`, transformers' `model` and `logits_dense`; None for neither
    or a mix."""
    keys = list(keys)
    native = any(k.startswith(("encoder.", "decoder.")) for k in keys)
    hf = any(k.startswith("model.") or k == "logits_dense.weight" for k in keys)
    if native != hf:
        return NATIVE if native else TRANSFORMERS
    return None


def _as_transformers(state: dict[str, Tensor], config: DiaConfig, origin: Path) -> dict[str, Tensor]:
    """`state` in transformers' layout, checked strictly against the config whichever layout it came in."""
    kind = _key_layout(state)
    if kind is None:
        raise NativeFormatError(f"{origin}: keys are neither native nor transformers Dia ones: {sorted(state)[:5]}")
    logger.info("%s: weights in the %s layout", origin, kind)
    try:
        if kind == NATIVE:
            return native_to_hf(state, config)
        _check(state, {r.hf: r.hf_shape for r in layout(config)}, "transformers-layout state dict")
        return state
    except NativeFormatError as err:
        raise NativeFormatError(f"{origin}: {err}") from err


def is_native_source(path: str | Path) -> bool:
    """Whether `path` is a native checkpoint rather than a transformers export: a `.pth` file or a folder
    holding one (transformers never writes `.pth`), a v0.1 `config.json`, or safetensors weights whose keys are
    native. A path that does not exist (a hub id) is False: hub ids are read as native only when asked."""
    path = Path(path)
    if not path.exists():
        return False
    folder = path if path.is_dir() else path.parent
    if path.suffix == ".pth" or (path.is_dir() and any(folder.glob("*.pth"))):
        return True
    config = folder / CONFIG_NAME
    if config.is_file() and _is_v01(_read_json(config)):
        return True
    weights = path if path.is_file() else folder / SAFETENSORS_NAME
    return weights.suffix == ".safetensors" and weights.is_file() and _key_layout(_safetensors_keys(weights)) == NATIVE


def _safetensors_keys(path: Path) -> list[str]:
    """The cleaned tensor names of a safetensors file, read from its header alone."""
    with safetensors.safe_open(path, framework="pt") as f:
        return [_clean_key(k) for k in f.keys()]


def load_native_model(source: str | Path, weights_name: str | None = None) -> DiaForConditionalGeneration:
    """A float32 `DiaForConditionalGeneration` in eval mode from a native checkpoint (any source `read_native`
    takes), built from its config and loaded strictly; half-precision weights are upcast exactly."""
    config, state = read_native(source, weights_name)
    model = DiaForConditionalGeneration(config).to(torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_native(model: DiaForConditionalGeneration, out_dir: str | Path, schema: str = V01) -> Path:
    """Write `model` as a native checkpoint in `schema`: `dia-v0_1.pth` (v0.1) or `model.pth` (0626) of
    contiguous CPU tensors in the model's dtype, and `config.json`. Returns the weights file's path."""
    native_config = hf_config_to_native(model.config, schema)  # refuses before anything is written
    if schema == V0626:  # the stored dtype is the tensors', which the model's config does not follow
        native_config["torch_dtype"] = _dtype_name(model.dtype)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    native = {k: v.contiguous() for k, v in hf_to_native(state, model.config).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / SAVE_NAMES[schema]
    torch.save(native, weights)
    (out / CONFIG_NAME).write_text(json.dumps(native_config, indent=2) + "\n")
    logger.info("Saved a native %s checkpoint (%d tensors) to %s", schema, len(native), weights)
    return weights
