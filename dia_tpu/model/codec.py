"""The DAC codec: built from the hub, a folder or a seeded random config; its identity, which prepared data
records; moved to the fastest device for encoding, its Snake activations fused; and the processor that names it
in exports."""

from __future__ import annotations

import functools
import types

import torch
from torch.nn.utils import parametrize
from transformers import DacConfig, DacModel, DiaFeatureExtractor, DiaProcessor, DiaTokenizer
from transformers.models.dac.modeling_dac import Snake1d

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


def fuse_snake(codec: DacModel) -> bool:
    """Run each Snake activation (x + sin(a x)^2 / a, after every convolution but the last, at up to the full
    audio rate) as one compiled elementwise kernel instead of five passes over memory: encoding on a CPU goes
    from about 1.5 to 2.9 times real time, with the same codes (tested). Returns False, leaving the codec as it
    was, where torch cannot compile here (no C++ compiler, say); the codes are the same either way."""
    kernel = _snake_kernel()
    try:
        with torch.no_grad():  # as the codec runs (`encode`, `decode`): the same compiled variant
            kernel(torch.zeros(1, 2, 8), torch.ones(1, 2, 1))
    except torch._dynamo.exc.BackendCompilerFailed:
        return False
    for module in codec.modules():
        if isinstance(module, Snake1d):
            module.forward = types.MethodType(_fused_snake_forward, module)
    return True


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # transformers' Snake1d, operation for operation, so the compiled kernel rounds as the eager one does.
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


@functools.cache
def _snake_kernel():
    # Dynamic shapes: one compilation serves every channel count and clip length.
    return torch.compile(_snake, dynamic=True)


def _fused_snake_forward(self: Snake1d, hidden_states: torch.Tensor) -> torch.Tensor:
    shape = hidden_states.shape
    # A plain tensor, not the Parameter: compiled code takes parameters' shapes as fixed, and would then compile
    # once per channel count. The codec is never trained here.
    return _snake_kernel()(hidden_states.reshape(shape[0], shape[1], -1), self.alpha.detach()).reshape(shape)


def _fold_weight_norm(module: torch.nn.Module) -> None:
    """Replace weight-norm parametrizations with the weights they compute (DacModel's own
    remove_weight_norm expects the older hook-based weight norm and fails on parametrized modules)."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


def encoder_reach(codec: DacModel) -> int:
    """Frames either side of a frame whose audio its code can depend on: the encoder's convolutions' reach,
    each in samples at its own rate, summed and rounded up to frames, plus one for where a frame's audio
    starts. The quantizer works frame by frame and adds nothing."""
    samples, rate = 0, 1
    for conv in codec.encoder.modules():
        if isinstance(conv, torch.nn.Conv1d):
            span, pad = (conv.kernel_size[0] - 1) * conv.dilation[0], conv.padding[0]
            samples += max(pad, span - pad) * rate
            rate *= conv.stride[0]
    return -(-samples // codec.config.hop_length) + 1


def codec_identity(cfg: ModelConfig) -> dict:
    """What identifies the codes a codec produces; stored with prepared data and checked before training."""
    if cfg.codec is not None:
        return {"codec": cfg.codec}
    return {"codec": None, "codec_architecture": cfg.codec_architecture, "init_seed": cfg.init_seed}


def make_processor(codec: DacModel) -> DiaProcessor:
    rate, hop = codec.config.sampling_rate, codec.config.hop_length
    feature_extractor = DiaFeatureExtractor(sampling_rate=rate, hop_length=hop)
    return DiaProcessor(feature_extractor, DiaTokenizer(), codec)
