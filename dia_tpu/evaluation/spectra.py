"""Log-mel spectra in torch, at several resolutions: the reconstruction loss a codec trains on and the
distance that judges how close decoded audio is to the original.

The distance is the mean absolute difference of log10 mel energies (floor 1e-5) over the scales, so
0 is identical audio; on speech, decoded audio of a good codec sits well under 0.5 and unrelated speech
of the same level near 1.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

# (window, mel bands): short windows resolve onsets, long ones pitch harmonics.
SCALES = ((64, 10), (128, 20), (256, 40), (512, 80), (1024, 160), (2048, 320))
FLOOR = 1e-5


@lru_cache(maxsize=32)
def _filters(window: int, mels: int, rate: int) -> torch.Tensor:
    bank = mel_filter_bank(
        num_frequency_bins=window // 2 + 1,
        num_mel_filters=mels,
        min_frequency=0.0,
        max_frequency=rate / 2,
        sampling_rate=rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.astype(np.float32))


def magnitudes(wave: torch.Tensor, window: int) -> torch.Tensor:
    """|STFT| of `wave` [..., T] with a Hann window and hop window/4: [..., window/2+1, frames]."""
    flat = wave.reshape(-1, wave.shape[-1])
    spec = torch.stft(
        flat,
        n_fft=window,
        hop_length=window // 4,
        window=torch.hann_window(window, device=wave.device),
        center=True,
        return_complex=True,
    )
    return spec.abs().reshape(*wave.shape[:-1], *spec.shape[-2:])


def log_mel(wave: torch.Tensor, rate: int, window: int, mels: int) -> torch.Tensor:
    """log10 mel energies of `wave` [..., T]: [..., mels, frames]."""
    mel = torch.einsum("...fk,fm->...mk", magnitudes(wave, window), _filters(window, mels, rate).to(wave.device))
    return mel.clamp(min=FLOOR).log10()


def mel_loss(decoded: torch.Tensor, target: torch.Tensor, rate: int) -> torch.Tensor:
    """Mean over SCALES of the L1 distance of log mels; both [..., T] at `rate`. Differentiable."""
    terms = [(log_mel(decoded, rate, w, m) - log_mel(target, rate, w, m)).abs().mean() for w, m in SCALES]
    return torch.stack(terms).mean()


def mel_distance(decoded: np.ndarray, original: np.ndarray, rate: int) -> float:
    """mel_loss of two mono waveforms, the shorter length of the two compared."""
    n = min(len(decoded), len(original))
    with torch.no_grad():
        return float(
            mel_loss(
                torch.from_numpy(np.ascontiguousarray(decoded[:n], dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(original[:n], dtype=np.float32)),
                rate,
            )
        )


def stft_loss(decoded: torch.Tensor, target: torch.Tensor, windows: tuple[int, ...] = (2048, 512)) -> torch.Tensor:
    """Log-magnitude L1 plus spectral convergence, averaged over `windows`; both [..., T]."""
    terms = []
    for w in windows:
        d, t = magnitudes(decoded, w), magnitudes(target, w)
        convergence = torch.linalg.norm(d - t) / torch.linalg.norm(t).clamp(min=FLOOR)
        log_l1 = (d.clamp(min=FLOOR).log10() - t.clamp(min=FLOOR).log10()).abs().mean()
        terms.append(convergence + log_l1)
    return torch.stack(terms).mean()
