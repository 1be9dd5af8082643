"""Where a recording speaks: voice activity regions (Silero VAD, whose model ships in its wheel), and how
consecutive regions are grouped into segments that one training clip can hold.

Times are seconds from the start of the recording. A region is one stretch of speech between pauses of at
least `min_silence`; a segment is one or more consecutive regions, at most `max_seconds` long from its
first region's start to its last region's end plus the padding kept around them, never across a pause
longer than `max_pause`. Cuts therefore always fall inside pauses, never inside a word.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from dia_tpu.errors import UserError
from dia_tpu.listen.asr import TimedWord

RATE = 16000  # what the VAD, the recognisers and the speaker encoders listen at
# Silence kept before the first and after the last region of a segment (less where the pause is shorter).
PAD = 0.2
# Silero splits speech longer than its limit at the longest pause it finds there, or, with none, exactly at the
# limit; two regions closer than this were cut apart mid-speech.
FORCED_CUT = 0.05


@dataclass
class Region:
    start: float
    end: float
    speaker: int = -1  # the recording's speaker cluster; -1 until assigned
    similarity: float = 1.0  # to its speaker's centroid
    text: str = ""
    confidence: float = 1.0
    words: list[TimedWord] | None = None  # in the recording's time, where the recogniser gives them
    problem: str | None = None  # why it cannot be used, whatever segment it falls in

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Segment:
    regions: list[Region] = field(default_factory=list)
    start: float = 0.0  # the cut, padding included
    end: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start


@functools.cache
def _vad():
    """Silero VAD's model (from its wheel) and its function that finds speech, loaded once per process."""
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError as err:
        raise UserError("dia-tpu transcribe needs silero-vad: pip install 'dia-tpu[transcribe]'") from err
    return load_silero_vad(), get_speech_timestamps


def speech_regions(wave: np.ndarray, threshold: float, min_silence: float, max_seconds: float) -> list[Region]:
    """Speech in a mono 16 kHz waveform, as Silero VAD finds it. No region is longer than `max_seconds`
    less the padding; one that had to be cut without a pause is marked with a problem."""
    import torch

    model, get_speech_timestamps = _vad()
    found = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
        model,
        threshold=threshold,
        sampling_rate=RATE,
        min_silence_duration_ms=int(min_silence * 1000),
        max_speech_duration_s=max(1.0, max_seconds - 2 * PAD),
    )
    regions = [Region(t["start"] / RATE, t["end"] / RATE) for t in found]
    for before, after in zip(regions, regions[1:], strict=False):
        if after.start - before.end < FORCED_CUT:
            for region in (before, after):
                region.problem = region.problem or f"speech longer than {max_seconds:g} s without a pause to cut at"
    return regions


def group(regions: list[Region], total: float, max_seconds: float, max_pause: float) -> list[Segment]:
    """Consecutive usable regions grouped greedily into segments of at most `max_seconds`, cut in pauses; a
    region with a problem, or a pause longer than `max_pause`, ends the segment before it."""
    segments: list[Segment] = []
    current: list[Region] = []

    def close() -> None:
        if current:
            segments.append(Segment(list(current)))
            current.clear()

    for region in regions:
        if region.problem is not None:
            close()
            continue
        if current and (
            region.start - current[-1].end > max_pause or region.end - current[0].start + 2 * PAD > max_seconds
        ):
            close()
        current.append(region)
    close()
    # Padding: up to PAD of the pause on each side, never more than half of it, so neighbours never overlap.
    bounds = [0.0] + [r.end for r in regions] + [total]
    starts = [r.start for r in regions] + [total]
    previous_end = {id(r): bounds[i] for i, r in enumerate(regions)}
    next_start = {id(r): starts[i + 1] for i, r in enumerate(regions)}
    for segment in segments:
        first, last = segment.regions[0], segment.regions[-1]
        before = first.start - previous_end[id(first)]
        after = next_start[id(last)] - last.end
        segment.start = max(0.0, first.start - min(PAD, before / 2 if previous_end[id(first)] > 0 else before))
        segment.end = min(total, last.end + min(PAD, after / 2 if next_start[id(last)] < total else after))
    return segments
