"""Waveforms: decode, downmix and resample audio files, and turn them into codec codes and back."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from transformers import DacModel

from dia_tpu.data.clips import AudioRef
from dia_tpu.errors import UserError
from dia_tpu.model.codec import encoder_reach


class AudioError(UserError):
    """An audio file that cannot be used; the message names the file."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """One audio file (anything libsndfile reads: wav, flac, mp3, ogg, opus) as mono float32 at `sample_rate`,
    with the checks `prepare` applies; an AudioError names the file."""
    return load_channels(path, sample_rate, stereo=False)[0]


def load_channels(path: str | Path, sample_rate: int, stereo: bool) -> list[np.ndarray]:
    """Like `load_audio`, as [mono] or, for `stereo`, [left, right] (mono input duplicated)."""
    try:
        data, rate = read_audio(AudioRef(path=Path(path)), min_sample_rate=1)
    except AudioError as err:
        raise AudioError(f"{path}: {err}") from err
    return to_codec_input(data, rate, sample_rate, stereo=stereo)


def header_seconds(ref) -> float | None:
    """An audio reference's length as its file header gives it, read without decoding the audio (None when
    there is no header to read: a decoded array, or a file libsndfile cannot open, which decoding reports)."""
    if ref.array is not None:
        return len(ref.array) / ref.rate
    try:
        info = sf.info(io.BytesIO(ref.data) if ref.data is not None else str(ref.path))
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


# Peak amplitude below which a clip counts as silence (-80 dBFS): nothing the codec could learn from.
SILENCE_PEAK = 1e-4


def read_audio(ref, min_sample_rate: int) -> tuple[np.ndarray, int]:
    """Decode an audio reference (`.path`, encoded `.data` bytes, or a decoded `.array` at `.rate`) to
    float32 [samples, channels] at its own rate, refusing what cannot train a codec model.

    Raises AudioError with the reason, which `prepare` reports for the clip: undecodable or truncated data,
    no samples, NaN/inf, a rate below `min_sample_rate`, more than two channels, silence.
    """
    if ref.array is not None:
        data = np.asarray(ref.array, dtype=np.float32)
        data, rate = (data[:, None] if data.ndim == 1 else data), int(ref.rate)
    else:
        try:
            raw = ref.data if ref.data is not None else Path(ref.path).read_bytes()
        except OSError as err:
            raise AudioError(f"cannot read the file: {err.strerror}") from err
        if problem := _wav_truncation(raw):
            raise AudioError(problem)
        try:
            data, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise AudioError(f"cannot decode audio: {err}") from err
    if data.shape[0] == 0:
        raise AudioError("no samples")
    if not np.isfinite(data).all():
        raise AudioError("non-finite samples (NaN or inf)")
    if rate < min_sample_rate:
        raise AudioError(f"sample rate {rate} Hz is below prepare.min_sample_rate={min_sample_rate}")
    if data.shape[1] > 2:
        raise AudioError(f"{data.shape[1]} channels: only mono or stereo audio is used")
    peak = float(np.abs(data).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS)")
    return data, rate


def to_codec_input(data: np.ndarray, rate: int, target_rate: int, stereo: bool) -> list[np.ndarray]:
    """[samples, channels] at `rate` to what the codec encodes: [mono] or [left, right] at `target_rate`.

    Stereo duplicates mono input; mono downmixes stereo.
    """
    if stereo:
        channels = [data[:, 0], data[:, -1]]
    else:
        channels = [data.mean(axis=1)]
    if rate != target_rate:
        channels = [soxr.resample(c, rate, target_rate, quality="HQ") for c in channels]
    return [np.ascontiguousarray(c, dtype=np.float32) for c in channels]


def _wav_truncation(raw: bytes) -> str | None:
    """A WAV whose data chunk promises more bytes than the file holds: libsndfile would read the rest
    silently, so this is the only place truncation shows."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(raw):
        chunk, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        if chunk == b"data":
            held = len(raw) - pos - 8
            # 0 and 0xFFFFFFFF mark a size left unwritten by a streaming writer, not a truncation.
            if 0 < size < 0xFFFFFFFF and held < size:
                return f"truncated: the WAV header promises {size} bytes of audio, the file holds {held}"
            return None
        pos += 8 + size + (size & 1)
    return None


# Windows of 2 s: on the 2-core CPU a whole clip encodes at 3.7x real time up to 2 s and at 2.5x at 10 s.
CPU_WINDOW_SECONDS = 2.0


@torch.no_grad()
def encode(codec: DacModel, waves: list[np.ndarray], window_seconds: float | None = None) -> list[np.ndarray]:
    """Encode equal-length mono waveforms in one batch; returns one int16 [T, C] array per wave.

    Callers batch equal lengths only: zero-padding a shorter clip changes its last frames.
    window_seconds: each wave is encoded alone, in equal windows of about this many seconds (`_encode_in_windows`),
    each given the encoder's reach of audio on either side, so that every frame gets the code the whole wave
    gives it (tested). On a CPU a window's activations stay in cache where a whole 10 s clip's (or a batch's) do
    not. None: CPU_WINDOW_SECONDS on a CPU, whole waves in one batch elsewhere; 0: whole waves in one batch.
    """
    if len({len(w) for w in waves}) != 1:
        raise ValueError("encode() batches equal-length waveforms only")
    device = next(codec.parameters()).device
    batch = torch.from_numpy(np.stack(waves))[:, None, :].to(device)
    if window_seconds is None:
        window_seconds = CPU_WINDOW_SECONDS if device.type == "cpu" else 0.0
    window = round(window_seconds * codec.config.sampling_rate / codec.config.hop_length)
    if window > 0:
        # One wave at a time: the point of windows is activations that fit in cache, which a batch would undo.
        codes = [_encode_in_windows(codec, wave[None], window)[0] for wave in batch]
    else:
        codes = codec.encode(batch).audio_codes
    return [c.T.to(torch.int16).cpu().numpy() for c in codes]  # [C, T] -> [T, C] each


def _encode_in_windows(codec: DacModel, audio: torch.Tensor, window: int) -> torch.Tensor:
    """Codes [B, C, T] of audio [B, 1, samples], in windows of about `window` frames, all of one size (a wave
    up to 1.5 windows long is encoded whole: the reach either side would cost more than the cache saves).
    Windows start on frame boundaries, so the encoder's strides line up with the whole wave's; the last runs
    to the wave's end, so the end is encoded exactly as in the whole wave."""
    hop, length, reach = codec.config.hop_length, audio.shape[-1], encoder_reach(codec)
    count = round(length // hop / window)
    if count <= 1:
        return codec.encode(audio).audio_codes
    window = -(-(length // hop) // count)
    pieces, start = [], 0  # start: the window's first frame
    while True:
        first = max(0, start - reach)
        end = (start + window + reach) * hop
        last = end >= length
        codes = codec.encode(audio[..., first * hop : length if last else end]).audio_codes
        pieces.append(codes[..., start - first : None if last else start - first + window])
        if last:
            return torch.cat(pieces, dim=-1)
        start += window


@torch.no_grad()
def decode(codec: DacModel, codes: torch.Tensor) -> np.ndarray:
    """Undelayed codes [T, C] (values 0..1023) to a float32 waveform at the codec's rate: [samples] from the
    codec's codebook count, [samples, 2] from twice as many (stereo: left codebooks, then right).

    No frames (a model that ends the audio at once) decode to no samples.
    """
    books = codec.config.n_codebooks
    if codes.shape[-1] == 2 * books:
        return np.stack([decode(codec, codes[:, :books]), decode(codec, codes[:, books:])], axis=-1)
    if codes.shape[-1] != books:
        raise UserError(f"{codes.shape[-1]} codebooks: the codec decodes {books} (mono) or {2 * books} (stereo)")
    if len(codes) == 0:
        return np.zeros(0, dtype=np.float32)
    device = next(codec.parameters()).device
    audio = codec.decode(audio_codes=codes.T[None].long().to(device)).audio_values
    return audio.reshape(-1).float().cpu().numpy()
