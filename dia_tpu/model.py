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

from dia_tpu.config import Config, ModelConfig, load

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
    """The model to fine-tune: pretrained weights, or a seeded random initialisation of `architecture`."""
    attention = attention_for(cfg, on_xla)
    if cfg.pretrained is not None:
        model = DiaForConditionalGeneration.from_pretrained(cfg.pretrained, dtype=torch.float32)
    else:
        config = DiaConfig(**cfg.architecture)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = DiaForConditionalGeneration(config)
        model.generation_config = default_generation_config(config)
    model.set_attn_implementation(attention)
    return model


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


def load_for_inference(source: str, device: str | torch.device = "cpu") -> tuple[DiaForConditionalGeneration, DacModel]:
    """Load (model, codec) from an export, a training checkpoint directory, or a hub id.

    An export or checkpoint names its codec in its saved config; an export may carry the codec itself.
    """
    path = Path(source)
    if not path.exists() and (source.startswith((".", "/", "~")) or len(path.parts) != 2):
        raise FileNotFoundError(f"model not found: {source} (neither a directory nor a hub id like org/name)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not an export or a checkpoint directory")
    model = DiaForConditionalGeneration.from_pretrained(source, dtype=torch.float32).to(device).eval()
    if model.generation_config.guidance_scale is None:
        model.generation_config = default_generation_config(model.config)
    codec = _codec_for(path).to(device)
    return model, codec


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
