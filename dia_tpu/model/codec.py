"""The DAC codec: built from the hub, a folder or a seeded random config; its identity, which prepared data
records; moved to the fastest device for encoding; and the processor that names it in exports."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize
from transformers import DacConfig, DacModel, DiaFeatureExtractor, DiaProcessor, DiaTokenizer

from dia_tpu.config import ModelConfig
from dia_tpu.hub import from_hub


def build_codec(cfg: ModelConfig) -> DacModel:
    """The DAC codec in eval mode: from the hub or a directory, or seeded random for tests and the demo."""
    if cfg.codec is not None:
        with from_hub("model.codec", cfg.codec):
            codec = DacModel.from_pretrained(cfg.codec, dtype=torch.float32)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            codec = DacModel(DacConfig(**cfg.codec_architecture))
    return codec.eval().requires_grad_(False)


def codec_config(cfg: ModelConfig) -> DacConfig:
    """The codec's configuration alone (rate, hop, codebooks), without loading its weights."""
    if cfg.codec is not None:
        with from_hub("model.codec", cfg.codec):
            return DacConfig.from_pretrained(cfg.codec)
    return DacConfig(**cfg.codec_architecture)


def codec_on_accelerator(codec: DacModel, device: torch.device) -> DacModel:
    """The codec on `device`, the process's accelerator as Accelerate chose it (a GPU, an XLA device, the CPU).

    On XLA the weight-norm parametrizations are folded into plain weights first: recomputing them in every
    traced graph is slow there, and the folded weights give the same codes.
    """
    if device.type == "xla":
        _fold_weight_norm(codec)
    return codec.to(device)


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


def make_processor(codec: DacModel) -> DiaProcessor:
    rate, hop = codec.config.sampling_rate, codec.config.hop_length
    feature_extractor = DiaFeatureExtractor(sampling_rate=rate, hop_length=hop)
    return DiaProcessor(feature_extractor, DiaTokenizer(), codec)
