"""Build and load Dia and its codec: hub ids, local directories, exports, training checkpoints.

This is the only module that knows where weights come from and how they are laid out.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch.nn.utils import parametrize
from transformers import (
    DacConfig,
    DacModel,
    DiaConfig,
    DiaFeatureExtractor,
    DiaForConditionalGeneration,
    DiaProcessor,
    DiaTokenizer,
    GenerationConfig,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface
from transformers.models.dia.modeling_dia import eager_attention_forward as dia_eager_attention

from dia_tpu.config import Config, ConfigError, ModelConfig, load

# The file a run directory, checkpoint or export keeps its resolved config in.
CONFIG_FILE = "config.yaml"
# Where an export keeps a codec that is not a hub id (for example the demo's random one).
CODEC_DIR = "codec"


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


def build_model(cfg: ModelConfig, on_xla: bool = False) -> DiaForConditionalGeneration:
    """The model to fine-tune, in fp32: pretrained weights (transformers or native Nari Labs format), or a
    seeded initialisation of `architecture`; widened to stereo or given a delay pattern when asked.

    Weights are loaded before anything else touches the model (compiling comes later, in training).
    """
    if cfg.pretrained is None:
        from dia_tpu.shapes import init_from_scratch

        model = init_from_scratch(DiaConfig(**cfg.architecture), cfg.init_seed, cfg.attention_scale)
        model.generation_config = default_generation_config(model.config)
    elif is_native(cfg):
        from dia_tpu.native import load_native_model

        model = load_native_model(cfg.pretrained)
        model.generation_config = default_generation_config(model.config)
    else:
        from dia_tpu.shapes import restore_attention_scale

        _check_hf_source(cfg.pretrained)
        model = DiaForConditionalGeneration.from_pretrained(cfg.pretrained, dtype=torch.float32)
        restore_attention_scale(model)
    model = _reshape(model, cfg)
    model.set_attn_implementation(attention_for(cfg, on_xla))
    return model


def architecture_config(cfg: ModelConfig) -> DiaConfig:
    """The configuration of the model `build_model` returns, without loading weights (for planning)."""
    if cfg.pretrained is None:
        config = DiaConfig(**cfg.architecture)
    elif is_native(cfg):
        from dia_tpu.native import read_native_config

        config = read_native_config(cfg.pretrained)
    else:
        _check_hf_source(cfg.pretrained)
        config = DiaConfig.from_pretrained(cfg.pretrained)
    if _widens(cfg, len(config.delay_pattern)):
        from dia_tpu.shapes import stereo_config

        return stereo_config(config, cfg.delay_pattern or None)
    if cfg.delay_pattern:
        config.delay_pattern = list(cfg.delay_pattern)
    return config


def is_native(cfg: ModelConfig) -> bool:
    """Whether `pretrained` is a native Nari Labs checkpoint (by `pretrained_format`, or detected)."""
    if cfg.pretrained is None or cfg.pretrained_format == "hf":
        return False
    if cfg.pretrained_format == "native":
        return True
    from dia_tpu.native import is_native_source

    return is_native_source(cfg.pretrained)


def _reshape(model: DiaForConditionalGeneration, cfg: ModelConfig) -> DiaForConditionalGeneration:
    """Widen a 9-codebook model to stereo (warm start), or set the configured delay pattern."""
    if _widens(cfg, len(model.config.delay_pattern)):
        from dia_tpu.shapes import widen_to_stereo

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
        raise ConfigError(f"model.delay_pattern has {len(cfg.delay_pattern)} delays; the model has {channels} "
                          "codebooks")  # fmt: skip
    return False


def build_codec(cfg: ModelConfig) -> DacModel:
    """The DAC codec in eval mode: from the hub or a directory, or seeded random for tests and the demo."""
    if cfg.codec is not None:
        codec = DacModel.from_pretrained(cfg.codec, dtype=torch.float32)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            codec = DacModel(DacConfig(**cfg.codec_architecture))
    return codec.eval().requires_grad_(False)


def codec_config(cfg: ModelConfig) -> DacConfig:
    """The codec's configuration alone (rate, hop, codebooks), without loading its weights."""
    if cfg.codec is not None:
        return DacConfig.from_pretrained(cfg.codec)
    return DacConfig(**cfg.codec_architecture)


def codec_on_accelerator(codec: DacModel, device: torch.device | None = None) -> DacModel:
    """Move the codec to the fastest device there is: a GPU, else an XLA device (TPU, or torch_xla's CPU
    device when PJRT_DEVICE is set), else the CPU.

    On XLA the weight-norm parametrizations are folded into plain weights first: recomputing them in every
    traced graph is slow there, and the folded weights give the same codes.
    """
    if torch.cuda.is_available():
        return codec.to(device if device is not None and device.type == "cuda" else "cuda")
    if os.environ.get("PJRT_DEVICE") and importlib.util.find_spec("torch_xla") is not None:
        import torch_xla

        _fold_weight_norm(codec)
        return codec.to(torch_xla.device())
    return codec


def _fold_weight_norm(module: torch.nn.Module) -> None:
    """Replace weight-norm parametrizations with the weights they compute (DacModel's own
    remove_weight_norm expects the older hook-based weight norm and fails on parametrized modules)."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


def codec_identity(cfg: ModelConfig) -> dict:
    """What identifies the codes a codec produces; stored with prepared data and checked before training."""
    if cfg.codec is not None:
        return {"codec": cfg.codec}
    return {"codec": None, "codec_architecture": cfg.codec_architecture, "init_seed": cfg.init_seed}


def default_generation_config(config: DiaConfig) -> GenerationConfig:
    """Sampling defaults as published with Dia-1.6B (CFG 3.0, temperature 1.8, top-p 0.90, top-k 45)."""
    dec = config.decoder_config
    return GenerationConfig(
        do_sample=True,
        guidance_scale=3.0,
        temperature=1.8,
        top_p=0.90,
        top_k=45,
        max_length=dec.max_position_embeddings,
        bos_token_id=dec.bos_token_id,
        eos_token_id=dec.eos_token_id,
        pad_token_id=dec.pad_token_id,
        decoder_start_token_id=dec.bos_token_id,
    )


def make_processor(codec: DacModel) -> DiaProcessor:
    rate, hop = codec.config.sampling_rate, codec.config.hop_length
    feature_extractor = DiaFeatureExtractor(sampling_rate=rate, hop_length=hop)
    return DiaProcessor(feature_extractor, DiaTokenizer(), codec)


def export(model: DiaForConditionalGeneration, codec: DacModel, cfg: Config, out_dir: Path) -> None:
    """Write a `from_pretrained`-loadable model directory with processor, generation config and run config.

    A codec that is not a hub id is saved inside the export and the processor points at it by absolute
    path, so `AutoProcessor.from_pretrained(out_dir)` finds it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors reads storage pointers, which XLA tensors do not have: write host copies.
    weights = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
    model.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
    if cfg.model.codec is None or Path(cfg.model.codec).exists():
        codec.save_pretrained(out_dir / CODEC_DIR)
        codec.name_or_path = str((out_dir / CODEC_DIR).resolve())
    make_processor(codec).save_pretrained(out_dir)
    cfg.save(out_dir / CONFIG_FILE)


def load_for_inference(
    source: str, device: str | torch.device = "cpu", adapter: str | None = None
) -> tuple[DiaForConditionalGeneration, DacModel]:
    """Load (model, codec) from an export, a training checkpoint directory (a LoRA run's too), a native
    Nari Labs checkpoint, or a hub id; `adapter` folds a LoRA adapter folder (peft format) into the model.

    An export or checkpoint names its codec in its saved config; an export may carry the codec itself.
    """
    model = load_model(source, adapter).to(device).eval()
    if model.generation_config.guidance_scale is None:
        model.generation_config = default_generation_config(model.config)
    return model, _codec_for(Path(source)).to(device)


def load_model(source: str, adapter: str | None = None) -> DiaForConditionalGeneration:
    """The model alone, in fp32, from any source `load_for_inference` takes."""
    path = Path(source)
    if path.exists() and is_native(ModelConfig(pretrained=source)):
        from dia_tpu.native import load_native_model

        model = load_native_model(source)
    elif is_adapter_checkpoint(path):
        from dia_tpu.adapters import merged

        model = merged(load_trained(path))
    else:
        _check_hf_source(source)
        from dia_tpu.shapes import restore_attention_scale

        model = DiaForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
        restore_attention_scale(model)
    return model if adapter is None else _with_adapter(model, adapter)


def _check_hf_source(source: str) -> None:
    """A transformers model source must be a folder with config.json or a hub id: transformers reads an empty
    folder as the default configuration without a word."""
    path = Path(source)
    if not path.exists() and (source.startswith((".", "/", "~")) or len(path.parts) != 2):
        raise FileNotFoundError(f"model not found: {source} (neither a directory nor a hub id like org/name)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not an export, a checkpoint or a native checkpoint")


def _with_adapter(model: DiaForConditionalGeneration, adapter: str) -> DiaForConditionalGeneration:
    """`model` with a peft LoRA adapter folder merged into its weights."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} holds no adapter_config.json: not a LoRA adapter folder")
    import peft

    return peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()


def is_adapter_checkpoint(path: Path) -> bool:
    """Whether `path` is a LoRA run's training checkpoint, which holds the trained weights only."""
    if not (path / CONFIG_FILE).is_file() or not load(path / CONFIG_FILE).model.lora.rank:
        return False
    return any("lora_" in key for key in saved_weight_names(path))


def saved_weight_names(folder: Path) -> set[str]:
    """The tensor names in a checkpoint's model file; none when the folder has none."""
    weights = _checkpoint_weights_file(folder)
    if weights is None:
        return set()
    if weights.suffix == ".bin":
        return set(_read_checkpoint_weights(folder))
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        return set(f.keys())


def _checkpoint_weights_file(folder: Path) -> Path | None:
    """What `accelerator.save_state` wrote the model to: safetensors, or torch's `.bin` (on XLA)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = _checkpoint_weights_file(folder)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds no model.safetensors or pytorch_model.bin")
    if weights.suffix == ".bin":
        return torch.load(weights, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(weights)


def load_trained(checkpoint: Path):
    """A LoRA run's checkpoint as the PeftModel it trained: the base rebuilt from the run's config, then the
    saved adapter (and modules_to_save) weights, which must be exactly its trainable parameters."""
    from dia_tpu.adapters import check_trained_names, setup_training

    cfg = load(checkpoint / CONFIG_FILE)
    model = setup_training(build_model(cfg.model), cfg.model)
    state = {key.removeprefix("module."): value for key, value in _read_checkpoint_weights(checkpoint).items()}
    check_trained_names(checkpoint, set(state), model)
    model.load_state_dict(state, strict=False)
    return model.eval()


def run_language_tags(source: str) -> dict:
    """The data.language_tags a model folder was trained with (its saved config.yaml), else none."""
    saved = Path(source) / CONFIG_FILE
    return load(saved).data.language_tags if saved.is_file() else {}


def _codec_for(path: Path) -> DacModel:
    if (path / CODEC_DIR / "config.json").is_file():
        return DacModel.from_pretrained(path / CODEC_DIR).eval()
    saved = path / CONFIG_FILE
    if saved.is_file():
        return build_codec(load(saved).model)
    processor_config = path / "processor_config.json"
    if processor_config.is_file():
        codec_id = json.loads(processor_config.read_text())["audio_tokenizer"]["audio_tokenizer_name_or_path"]
        return build_codec(ModelConfig(codec=codec_id))
    return build_codec(ModelConfig())
