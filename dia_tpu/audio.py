"""Waveforms and codes: decode, downmix and resample audio files; encode/decode with the codec; the delay pattern.

Codes are stored undelayed as [T, C]; `apply_delay` is the only place the delay is applied and
`revert_delay` the only place it is undone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from transformers import DacModel


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any file libsndfile can (wav, flac, mp3, ogg, opus), downmix to mono, resample to `sample_rate`."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


@torch.no_grad()
def encode(codec: DacModel, waves: list[np.ndarray]) -> list[np.ndarray]:
    """Encode equal-length mono waveforms in one batch; returns one int16 [T, C] array per wave.

    Callers batch equal lengths only: zero-padding a shorter clip changes its last frames.
    """
    if len({len(w) for w in waves}) != 1:
        raise ValueError("encode() batches equal-length waveforms only")
    device = next(codec.parameters()).device
    batch = torch.from_numpy(np.stack(waves))[:, None, :].to(device)
    codes = codec.encode(batch).audio_codes  # [B, C, T]
    return [c.T.to(torch.int16).cpu().numpy() for c in codes]


@torch.no_grad()
def decode(codec: DacModel, codes: torch.Tensor) -> np.ndarray:
    """Undelayed codes [T, C] (values 0..1023) to a mono float32 waveform at the codec's rate.

    No frames (a model that ends the audio at once) decode to no samples.
    """
    if len(codes) == 0:
        return np.zeros(0, dtype=np.float32)
    device = next(codec.parameters()).device
    audio = codec.decode(audio_codes=codes.T[None].long().to(device)).audio_values
    return audio.reshape(-1).float().cpu().numpy()


def apply_delay(codes: torch.Tensor, delay: list[int], bos: int, pad: int) -> torch.Tensor:
    """Shift channel c right by delay[c]: out[t, c] = codes[t - delay[c], c], BOS before, PAD after.

    codes: [..., T, C]; returns [..., T + max(delay), C].
    """
    steps, channels = codes.shape[-2:]
    total = steps + max(delay)
    src = torch.arange(total, device=codes.device)[:, None] - torch.tensor(delay, device=codes.device)[None, :]
    gathered = codes.gather(-2, src.clamp(0, steps - 1).expand(*codes.shape[:-2], total, channels))
    out = torch.where(src < 0, bos, gathered)
    return torch.where(src >= steps, pad, out)


def revert_delay(delayed: torch.Tensor, delay: list[int]) -> torch.Tensor:
    """Inverse of `apply_delay`: out[t, c] = delayed[t + delay[c], c]; returns [..., T - max(delay), C]."""
    total, channels = delayed.shape[-2:]
    steps = total - max(delay)
    src = torch.arange(steps, device=delayed.device)[:, None] + torch.tensor(delay, device=delayed.device)[None, :]
    return delayed.gather(-2, src.expand(*delayed.shape[:-2], steps, channels))
