"""The two native Nari Labs `config.json` schemas <-> transformers' `DiaConfig`.

"v0.1" is `dia-v0_1.pth`'s (sections `model` and `data`); "0626" is Dia-1.6B-0626's (flat, with transformers
4.53's names). Reading checks every key; writing refuses what the native code cannot run.
"""

from __future__ import annotations

import torch
import transformers
from transformers import DiaConfig

from dia_tpu.artifacts.native import NativeFormatError, is_v01

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
    if is_v01(native):
        return V01
    if isinstance(native, dict) and {"encoder_config", "decoder_config"} <= native.keys():
        return V0626
    found = sorted(native) if isinstance(native, dict) else type(native).__name__
    raise NativeFormatError(
        "not a native Dia config: expected 'model' and 'data' (v0.1) or 'encoder_config' and 'decoder_config' "
        f"(0626), found {found}"
    )


def _v01_to_hf(native: dict) -> DiaConfig:
    model, data = native["model"], native["data"]
    enc, dec = model["encoder"], model["decoder"]
    unknown = [
        f"{name}.{k}"
        for name, section in (("model.encoder", enc), ("model.decoder", dec), ("model", model), ("data", data))
        for k in sorted(set(section) - _V01_KEYS[name.split(".")[-1]])
    ]
    if unknown:
        raise NativeFormatError(f"native config has keys this converter does not know: {unknown}")
    if model.get("rope_min_timescale", 1) != 1:  # transformers derives rope from one base, native from min and max
        raise NativeFormatError(f"rope_min_timescale={model['rope_min_timescale']} has no transformers equivalent")
    rope = {"rope_type": "default", "rope_theta": float(model.get("rope_max_timescale", 10_000))}
    eps = model.get("normalization_layer_epsilon", 1e-5)
    encoder = dict(
        num_hidden_layers=enc["n_layer"],
        hidden_size=enc["n_embd"],
        intermediate_size=enc["n_hidden"],
        num_attention_heads=enc["n_head"],
        num_key_value_heads=enc["n_head"],
        head_dim=enc["head_dim"],
        vocab_size=model["src_vocab_size"],
        norm_eps=eps,
        max_position_embeddings=data["text_length"],
        rope_parameters=rope,
    )
    decoder = dict(
        num_hidden_layers=dec["n_layer"],
        hidden_size=dec["n_embd"],
        intermediate_size=dec["n_hidden"],
        num_attention_heads=dec["gqa_query_heads"],
        num_key_value_heads=dec["kv_heads"],
        head_dim=dec["gqa_head_dim"],
        cross_num_attention_heads=dec["cross_query_heads"],
        cross_num_key_value_heads=dec["cross_query_heads"],
        cross_head_dim=dec["cross_head_dim"],
        cross_hidden_size=enc["n_embd"],
        vocab_size=model["tgt_vocab_size"],
        num_channels=data["channels"],
        norm_eps=eps,
        max_position_embeddings=data["audio_length"],
        rope_parameters=dict(rope),
        pad_token_id=data["audio_pad_value"],
        eos_token_id=data["audio_eos_value"],
        bos_token_id=data["audio_bos_value"],
    )
    return DiaConfig(
        encoder_config=encoder, decoder_config=decoder, norm_eps=eps, delay_pattern=list(data["delay_pattern"])
    )


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
        (
            getattr(config, "attention_scale", 1.0) != 1.0,
            f"attention_scale={getattr(config, 'attention_scale', 1.0)} (native Dia attention uses 1.0)",
        ),
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
    encoder = {
        "n_layer": enc.num_hidden_layers,
        "n_embd": enc.hidden_size,
        "n_hidden": enc.intermediate_size,
        "n_head": enc.num_attention_heads,
        "head_dim": enc.head_dim,
    }
    decoder = {
        "n_layer": dec.num_hidden_layers,
        "n_embd": dec.hidden_size,
        "n_hidden": dec.intermediate_size,
        "gqa_query_heads": dec.num_attention_heads,
        "kv_heads": dec.num_key_value_heads,
        "gqa_head_dim": dec.head_dim,
        "cross_query_heads": dec.cross_num_attention_heads,
        "cross_head_dim": dec.cross_head_dim,
    }
    model = {
        "encoder": encoder,
        "decoder": decoder,
        "src_vocab_size": enc.vocab_size,
        "tgt_vocab_size": dec.vocab_size,
        "normalization_layer_epsilon": enc.norm_eps,
        "rope_min_timescale": 1,
        "rope_max_timescale": dec.rope_parameters["rope_theta"],
    }
    data = {
        "text_length": enc.max_position_embeddings,
        "audio_length": dec.max_position_embeddings,
        "channels": dec.num_channels,
        "audio_eos_value": dec.eos_token_id,
        "audio_pad_value": dec.pad_token_id,
        "audio_bos_value": dec.bos_token_id,
        "delay_pattern": list(config.delay_pattern),
    }
    return {"version": "0.1", "model": model, "data": data}


def _hf_to_0626(config: DiaConfig) -> dict:
    enc, dec = config.encoder_config, config.decoder_config

    def sub(sub_config, keys: set[str]) -> dict:
        out = {k: getattr(sub_config, k) for k in keys - _0626_NOT_HF}
        out["num_key_value_heads"] = sub_config.num_key_value_heads or sub_config.num_attention_heads
        out |= {
            "model_type": sub_config.model_type,
            "rope_scaling": None,
            "rope_theta": sub_config.rope_parameters["rope_theta"],
        }
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
        "torch_dtype": dtype_name(config.dtype),
        "transformers_version": transformers.__version__,
    }


def dtype_name(dtype: torch.dtype | str | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
