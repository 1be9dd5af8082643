"""Build the Dia model to fine-tune: pretrained (transformers or native format, local or from the hub) or
initialised from an architecture, reshaped to stereo or a delay pattern, with its attention implementation."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import DiaConfig, DiaForConditionalGeneration, GenerationConfig

from dia_tpu.artifacts.native import is_dia2_folder, is_native_source
from dia_tpu.artifacts.weights import refusing_code
from dia_tpu.config import SAMPLING, ConfigError, ModelConfig
from dia_tpu.errors import UserError
from dia_tpu.hub import from_hub, is_hub_id
from dia_tpu.model.attention import attention_for


def build_model(cfg: ModelConfig, attention: str | None = None) -> DiaForConditionalGeneration:
    """The model to fine-tune, in fp32: pretrained weights (transformers or native Nari Labs format), or a
    seeded initialisation of `architecture`; widened to stereo or given a delay pattern when asked.

    `attention` is the attention implementation (training's `Runtime` decides it); None: the config's off XLA.
    Weights are loaded before anything else touches the model (compiling comes later, in training).
    """
    _refuse_dia2(cfg)
    if cfg.pretrained is None:
        from dia_tpu.model.shapes import init_from_scratch

        model = init_from_scratch(DiaConfig(**cfg.architecture), cfg.init_seed, cfg.attention_scale)
        model.generation_config = default_generation_config(model.config)
    elif is_native(cfg):
        from dia_tpu.model.native_files import load_native_model

        with (
            from_hub("model.pretrained", cfg.pretrained, "the folder with config.json and the weights"),
            refusing_code(f"model.pretrained {cfg.pretrained}"),
        ):
            model = load_native_model(cfg.pretrained)
        model.generation_config = default_generation_config(model.config)
    else:
        from dia_tpu.model.shapes import restore_attention_scale

        check_transformers_source(cfg.pretrained)
        with from_hub("model.pretrained", cfg.pretrained), refusing_code(f"model.pretrained {cfg.pretrained}"):
            model = DiaForConditionalGeneration.from_pretrained(cfg.pretrained, dtype=torch.float32)
        restore_attention_scale(model)
    model = _reshape(model, cfg)
    model.set_attn_implementation(attention or attention_for(cfg, on_xla=False))
    return model


def plain_model(
    config: DiaConfig, state: dict[str, torch.Tensor], generation_config: GenerationConfig | None = None
) -> DiaForConditionalGeneration:
    """A plain fp32 CPU model of `config` (attention scale included) holding the weights `state`: for weights
    gathered from a sharded model, whose own modules cannot be saved as they are, or read from a sharded
    checkpoint."""
    from dia_tpu.model.shapes import restore_attention_scale

    model = DiaForConditionalGeneration(config)
    restore_attention_scale(model)  # a model built from a config starts at scale 1
    model.load_state_dict({k: v.detach().cpu().float() for k, v in state.items()})
    if generation_config is not None:
        model.generation_config = generation_config
    return model.eval()


def architecture_config(cfg: ModelConfig) -> DiaConfig:
    """The configuration of the model `build_model` returns, without loading weights (for planning)."""
    _refuse_dia2(cfg)
    if cfg.pretrained is None:
        config = DiaConfig(**cfg.architecture)
    elif is_native(cfg):
        from dia_tpu.model.native_files import read_native_config

        with from_hub("model.pretrained", cfg.pretrained, "the folder with config.json and the weights"):
            config = read_native_config(cfg.pretrained)
    else:
        check_transformers_source(cfg.pretrained)
        with from_hub("model.pretrained", cfg.pretrained):
            config = DiaConfig.from_pretrained(cfg.pretrained)
    if _widens(cfg, len(config.delay_pattern)):
        from dia_tpu.model.shapes import stereo_config

        return stereo_config(config, cfg.delay_pattern or None)
    if cfg.delay_pattern:
        config.delay_pattern = list(cfg.delay_pattern)
    return config


def _refuse_dia2(cfg: ModelConfig) -> None:
    """A Dia2 folder as `model.pretrained`: refused in words that say so (transformers would read its config as
    a Dia one of default shape)."""
    if cfg.pretrained is not None and is_dia2_folder(cfg.pretrained):
        raise UserError(
            f"model.pretrained {cfg.pretrained} is a Dia2 model (Nari Labs' streaming model, in its upstream "
            "format): this command takes Dia models only (`prepare`, `train`, `export`, `generate`, `evaluate`, "
            "`studio` and `push` take Dia2)"
        )


def is_native(cfg: ModelConfig) -> bool:
    """Whether `pretrained` is a native Nari Labs checkpoint (by `pretrained_format`, or detected)."""
    if cfg.pretrained is None or cfg.pretrained_format == "hf":
        return False
    if cfg.pretrained_format == "native":
        return True
    return is_native_source(cfg.pretrained)


def _reshape(model: DiaForConditionalGeneration, cfg: ModelConfig) -> DiaForConditionalGeneration:
    """Widen a 9-codebook model to stereo (warm start), or set the configured delay pattern."""
    if _widens(cfg, len(model.config.delay_pattern)):
        from dia_tpu.model.shapes import widen_to_stereo

        return widen_to_stereo(model, cfg.delay_pattern or None)
    if cfg.delay_pattern:
        model.config.delay_pattern = list(cfg.delay_pattern)
    return model


def _widens(cfg: ModelConfig, channels: int) -> bool:
    """Whether a model of `channels` codebooks is widened to stereo; a shape the config cannot give it (stereo
    from neither 9 nor 18 codebooks, a delay pattern of another length) is a ConfigError."""
    if cfg.stereo and channels == 9:
        return True
    if cfg.stereo and channels != 18:
        raise ConfigError(f"model.stereo: the model has {channels} codebooks; stereo needs 9 (to widen) or 18")
    if cfg.delay_pattern and len(cfg.delay_pattern) != channels:
        raise ConfigError(
            f"model.delay_pattern has {len(cfg.delay_pattern)} delays; the model has {channels} codebooks"
        )
    return False


def check_transformers_source(source: str) -> None:
    """A transformers model source must be a folder with config.json or a hub id: transformers reads an empty
    folder as the default configuration without a word."""
    path = Path(source)
    if not path.exists() and not is_hub_id(source):
        raise FileNotFoundError(f"model not found: {source} (neither a directory nor a hub id like org/name)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not an export, a checkpoint or a native checkpoint")


def carrying(generation_config: GenerationConfig, sampling: dict) -> GenerationConfig:
    """A copy of `generation_config` sampling with `sampling` (guidance_scale, temperature, top_p, top_k)."""
    out = copy.deepcopy(generation_config)
    out.update(do_sample=True, **sampling)
    return out


def default_generation_config(config: DiaConfig) -> GenerationConfig:
    """Generation settings with Dia-1.6B's published sampling defaults (`dia_tpu.config.SAMPLING`)."""
    dec = config.decoder_config
    return GenerationConfig(
        do_sample=True,
        guidance_scale=SAMPLING.guidance_scale,
        temperature=SAMPLING.temperature,
        top_p=SAMPLING.top_p,
        top_k=SAMPLING.top_k,
        max_length=dec.max_position_embeddings,
        bos_token_id=dec.bos_token_id,
        eos_token_id=dec.eos_token_id,
        pad_token_id=dec.pad_token_id,
        decoder_start_token_id=dec.bos_token_id,
    )
