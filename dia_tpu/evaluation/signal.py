"""What can be measured on a generated utterance without a model: its length and ending, its pauses, whether
it speeds up, and the ways generation degenerates (loops, stuck frames, collapsed codebook use, clipping,
silence, non-finite samples).

Levels are in dB of 20 ms frames. A frame is voiced when it is within `SILENCE_BELOW_PEAK_DB` of the clip's
loudest frame and above `SILENCE_FLOOR_DBFS`. The speaking rate is counted in energy bursts (roughly
syllables) per second of the voiced span, so it compares the first and the last third of one clip; it is not
a words-per-minute figure. `problems` turns the measures into named flags with the thresholds below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from dia_tpu.evaluation.text import spoken_text

FRAME_SECONDS = 0.02
SILENCE_BELOW_PEAK_DB = 40.0
SILENCE_FLOOR_DBFS = -60.0
# A clip whose loudest frame is below this is silent.
SILENT_DBFS = -50.0
# Flags: duration against the reference (or expected) duration outside [TOO_SHORT, TOO_LONG]; a last third
# SPEEDS_UP times as fast as the first; a pause longer than LONG_PAUSE_S inside the speech or TRAILING_S
# after it; a repeating stretch of LOOP_S or more; more than STUCK_FRACTION of frames identical to the one
# before; codebook-0 entropy below LOW_ENTROPY of its maximum; more than CLIPPED_FRACTION of samples at full
# scale; a last voiced frame within CUT_OFF_DB of the peak at the very end (it stops mid-sound).
TOO_SHORT, TOO_LONG = 0.5, 2.0
SPEEDS_UP = 1.7
RATE_MIN_THIRD_S = 1.0
LONG_PAUSE_S, TRAILING_S = 1.5, 1.0
LOOP_S = 1.0
STUCK_FRACTION = 0.3
LOW_ENTROPY = 0.5
CLIPPED_FRACTION = 0.001
CUT_OFF_DB = 25.0


@dataclass
class SignalMeasures:
    seconds: float
    reference_seconds: float | None  # the reference clip's, or the text's expected duration
    ended: bool  # generation stopped with EOS before the frame limit
    peak_dbfs: float
    leading_silence_s: float
    trailing_silence_s: float
    longest_pause_s: float  # inside the voiced span
    rate_first: float  # energy bursts per second in the first third of the voiced span
    rate_last: float
    loop_s: float  # the longest stretch that repeats an earlier one
    clipped_fraction: float
    non_finite: bool
    cut_off: bool
    stuck_fraction: float | None = None  # from the codes, when given
    code_entropy: float | None = None  # codebook 0, as a fraction of its maximum

    def to_dict(self) -> dict:
        return asdict(self)


def measure(
    wave: np.ndarray,
    rate: int,
    ended: bool = True,
    reference_seconds: float | None = None,
    codes: np.ndarray | None = None,
    codebook_size: int = 1024,
) -> SignalMeasures:
    """Measures of one mono clip (`codes`: its undelayed frames [n, C], for the code checks)."""
    wave = np.asarray(wave, dtype=np.float64)
    wave = wave.mean(-1) if wave.ndim == 2 else wave.reshape(-1)  # stereo: both channels
    non_finite = not bool(np.isfinite(wave).all())
    wave = np.nan_to_num(wave, nan=0.0, posinf=1.0, neginf=-1.0)
    levels = frame_levels(wave, rate)
    voiced = voiced_frames(levels)
    found = np.flatnonzero(voiced)
    if len(found):
        first, last = int(found[0]), int(found[-1])
        span = voiced[first : last + 1]
        rate_first, rate_last = _burst_rates(levels[first : last + 1])
        tail = levels[last] >= levels.max() - CUT_OFF_DB and last >= len(levels) - 2
    else:
        first, last, span, rate_first, rate_last, tail = len(levels), -1, voiced[:0], 0.0, 0.0, False
    measures = SignalMeasures(
        seconds=len(wave) / rate,
        reference_seconds=reference_seconds,
        ended=ended,
        peak_dbfs=float(levels.max()) if len(levels) else -math.inf,
        leading_silence_s=first * FRAME_SECONDS,
        trailing_silence_s=(len(levels) - 1 - last) * FRAME_SECONDS,
        longest_pause_s=_longest_run(~span) * FRAME_SECONDS,
        rate_first=rate_first,
        rate_last=rate_last,
        loop_s=longest_repeat(wave, rate, voiced),
        clipped_fraction=float(np.mean(np.abs(wave) >= 0.999)) if len(wave) else 0.0,
        non_finite=non_finite,
        cut_off=bool(tail),
    )
    if codes is not None and len(codes):
        codes = np.asarray(codes)
        measures.stuck_fraction = float(np.mean((codes[1:] == codes[:-1]).all(-1))) if len(codes) > 1 else 0.0
        measures.code_entropy = code_entropy(codes[:, 0], codebook_size)
    return measures


def problems(m: SignalMeasures) -> list[str]:
    """The named problems of an utterance, in a fixed order."""
    found = []
    if m.non_finite:
        found.append("non_finite")
    if m.seconds == 0:
        return found + ["empty"] + ([] if m.ended else ["no_eos"])
    silent = m.peak_dbfs < SILENT_DBFS
    if silent:
        found.append("silent")
    if not m.ended:
        found.append("no_eos")
    if m.reference_seconds:
        ratio = m.seconds / m.reference_seconds
        found += ["too_short"] if ratio < TOO_SHORT else ["too_long"] if ratio > TOO_LONG else []
    if silent:
        return found  # nothing is said: pauses, pace and loops have no meaning
    if m.rate_first > 0 and m.rate_last >= SPEEDS_UP * m.rate_first:
        found.append("speeds_up")
    if m.longest_pause_s > LONG_PAUSE_S:
        found.append("long_pause")
    if m.trailing_silence_s > TRAILING_S:
        found.append("trailing_silence")
    if m.cut_off:
        found.append("cut_off")
    if m.loop_s >= LOOP_S:
        found.append("loop")
    if m.stuck_fraction is not None and m.stuck_fraction > STUCK_FRACTION:
        found.append("stuck_frames")
    if m.code_entropy is not None and m.code_entropy < LOW_ENTROPY:
        found.append("low_entropy")
    if m.clipped_fraction > CLIPPED_FRACTION:
        found.append("clipping")
    return found


def frame_levels(wave: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of each 20 ms frame, in dBFS (a partial last frame counts)."""
    size = max(1, round(FRAME_SECONDS * rate))
    if len(wave) == 0:
        return np.zeros(0)
    padded = np.pad(wave, (0, -len(wave) % size))
    rms = np.sqrt(np.mean(padded.reshape(-1, size) ** 2, axis=1))
    return 20 * np.log10(rms + 1e-10)


def voiced_frames(levels: np.ndarray) -> np.ndarray:
    if len(levels) == 0:
        return np.zeros(0, dtype=bool)
    return levels > max(levels.max() - SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS)


def _longest_run(mask: np.ndarray) -> int:
    """The longest run of True in `mask`."""
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _burst_rates(levels: np.ndarray) -> tuple[float, float]:
    """Energy bursts per second in the first and the last third of the voiced span: a rise to within 10 dB
    of the peak after a fall to 20 dB below it. Thirds shorter than `RATE_MIN_THIRD_S` are too few bursts to
    compare: (0, 0), not measured."""
    if len(levels) * FRAME_SECONDS < 3 * RATE_MIN_THIRD_S:
        return 0.0, 0.0
    high, low = levels.max() - 10, levels.max() - 20
    third = len(levels) // 3

    def rate(part: np.ndarray) -> float:
        bursts, armed = 0, True
        for level in part:
            if armed and level >= high:
                bursts, armed = bursts + 1, False
            elif level <= low:
                armed = True
        return bursts / (len(part) * FRAME_SECONDS)

    return rate(levels[:third]), rate(levels[-third:])


def longest_repeat(
    wave: np.ndarray, rate: int, voiced: np.ndarray, min_period_s: float = 0.2, max_period_s: float = 5.0
) -> float:
    """Seconds of the longest voiced stretch whose spectrum repeats the one a period earlier (a period between
    `min_period_s` and `max_period_s`), as when generation loops over a segment. A sustained sound would
    repeat too, so the period must exceed a syllable's length."""
    size = max(1, round(FRAME_SECONDS * rate))
    frames = len(wave) // size
    period_min = max(1, round(min_period_s / FRAME_SECONDS))
    if frames < 2 * period_min:
        return 0.0
    spectra = np.abs(np.fft.rfft(wave[: frames * size].reshape(frames, size) * np.hanning(size), axis=1))
    bands = np.log1p(np.add.reduceat(spectra, np.linspace(0, spectra.shape[1] - 1, 33).astype(int)[:-1], axis=1))
    bands /= np.linalg.norm(bands, axis=1, keepdims=True) + 1e-9
    voiced = voiced[:frames]
    best = 0
    for period in range(period_min, min(frames // 2, round(max_period_s / FRAME_SECONDS)) + 1):
        both = voiced[period:] & voiced[:-period]
        match = ((bands[period:] * bands[:-period]).sum(1) > 0.995) & both
        # A repeat may span the pauses inside it (silence repeating silence) but must be mostly sound.
        quiet = ~voiced[period:] & ~voiced[:-period]
        edges = np.diff(np.concatenate([[0], (match | quiet).astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        sounding = np.concatenate([[0], np.cumsum(match)])
        for start, end in zip(starts, ends, strict=True):
            length = end - start
            if length >= period and length > best and sounding[end] - sounding[start] >= 0.5 * length:
                best = length  # at least one whole period repeated
    return best * FRAME_SECONDS


def code_entropy(tokens: np.ndarray, codebook_size: int) -> float:
    """Entropy of a codebook's tokens as a fraction of the most they could have (all distinct, or uniform)."""
    if len(tokens) < 2:
        return 1.0
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() / math.log2(min(len(tokens), codebook_size)))


def expected_seconds(text: str, chars_per_second: float) -> float:
    """How long a text takes at a speaker's pace (characters of its spoken words per second)."""
    return len(spoken_text(text)) / chars_per_second
