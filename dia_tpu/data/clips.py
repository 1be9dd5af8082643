"""What every source yields: a `Clip`, with where its audio is (`AudioRef`) and its timing (`Segment`s), and the
helpers every source kind shares to fill one in: text normalisation, attaching a file, parsing segment timing,
listing a folder.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia_tpu.data.codes_files import CODES_EXTENSIONS
from dia_tpu.errors import UserError


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str
    speaker: str = ""  # as the timing file names them (moshi-finetune's alignments), else ""


@dataclass
class AudioRef:
    """Where a clip's waveform comes from: exactly one of a file path, encoded bytes, or a decoded array."""

    path: Path | None = None
    data: bytes | None = None  # an encoded file's bytes (HF Audio(decode=False) rows with bytes)
    array: np.ndarray | None = None  # decoded samples, [n] or [n, channels]
    rate: int | None = None  # with `array`

    def __post_init__(self) -> None:
        given = [name for name in ("path", "data", "array") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"AudioRef needs exactly one of path, data, array; got {given or 'none'}")
        if self.array is not None and self.rate is None:
            raise ValueError("AudioRef: a decoded array needs its sample rate")

    def content(self) -> bytes:
        """Bytes that identify the audio, for a cache key."""
        if self.path is not None:
            return Path(self.path).read_bytes()
        if self.data is not None:
            return self.data
        array = np.ascontiguousarray(self.array)
        return f"{array.dtype}{array.shape}@{self.rate}:".encode() + array.tobytes()


@dataclass
class Clip:
    index: int  # position in the source's order, 0..n-1, stable for unchanged input
    source_id: str  # unique human-readable id: path relative to the input folder, or "split/row" for HF rows
    text: str  # transcript, or comma-separated music tags
    speaker: str = ""
    language: str = ""
    audio: AudioRef | None = None
    codes_file: Path | None = None  # codes encoded elsewhere, imported without the codec
    segments: list[Segment] | None = None  # word/segment timing when the source gives it
    problem: str | None = None  # why this clip cannot be used; prepare skips it with this reason


def normalize_text(text: str) -> str:
    """NFC, runs of whitespace collapsed to one space, stripped; [S1]/[xx] tags are left as they are."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def attach_file(clip: Clip, root: Path, name: str, absolute_ok: bool, elsewhere: tuple[str, ...] = ()) -> None:
    """Point the clip at `root/name` (audio, or codes by suffix), or failing that at the first of the
    `elsewhere` names that exists, with its same-stem .json timing if any; or set the clip's problem, which
    names every path tried. Paths are normalised without resolving symlinks, so a linked audio folder
    inside the dataset still counts as inside it."""
    path = Path(os.path.normpath(root / name))
    if not path.is_relative_to(root) and not (absolute_ok and Path(name).is_absolute()):
        clip.problem = "path escapes the dataset folder"
        return
    tried = [path, *(Path(os.path.normpath(root / other)) for other in elsewhere)]
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        clip.problem = f"missing file: looked for {' and '.join(str(p) for p in tried)}"
        return
    if path.suffix.lower() in CODES_EXTENSIONS:
        clip.codes_file = path
    else:
        clip.audio = AudioRef(path=path)
    timing = path.with_suffix(".json")
    if timing.is_file():
        try:
            clip.segments = parse_segments(json.loads(timing.read_bytes()))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            clip.problem = f"bad segment timing in {timing.name}: {err}"


def parse_segments(value) -> list[Segment]:
    """[{start, end, text}, ...] (or a dict of such lists, or Whisper's {"segments": [...]}) as Segments; or
    moshi-finetune's word timings, {"alignments": [[word, [start, end], speaker], ...]}, a Segment a word."""
    if isinstance(value, dict) and "alignments" in value:
        return _alignments(value["alignments"])
    if isinstance(value, dict) and "segments" in value:
        value = value["segments"]
    if isinstance(value, dict):  # a datasets Sequence of structs reads back as a dict of lists
        keys = ("start", "end", "text")
        if not all(isinstance(value.get(k), list) for k in keys) or len({len(value[k]) for k in keys}) != 1:
            raise UserError("expected equal-length start, end and text lists")
        value = [dict(zip(keys, item, strict=True)) for item in zip(*(value[k] for k in keys), strict=True)]
    if not isinstance(value, list):
        raise UserError(f"expected a list of {{start, end, text}}, got {type(value).__name__}")
    segments = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not all(k in item for k in ("start", "end", "text")):
            raise UserError(f"item {i} is not a {{start, end, text}} object")
        start, end, text = item["start"], item["end"], item["text"]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end))
        if not numbers or not 0 <= start <= end or not isinstance(text, str):
            raise UserError(f"item {i}: need 0 <= start <= end (seconds) and a text, got {item}")
        segments.append(Segment(float(start), float(end), text))
    return segments


def _alignments(value) -> list[Segment]:
    if not isinstance(value, list):
        raise UserError(f"alignments: expected a list of [word, [start, end], speaker], got {type(value).__name__}")
    segments = []
    for i, item in enumerate(value):
        try:
            word, (start, end), *speaker = item
            start, end = float(start), float(end)
        except (TypeError, ValueError) as err:
            raise UserError(f"alignments item {i} is not [word, [start, end], speaker]: {item!r}") from err
        if not isinstance(word, str) or not 0 <= start <= end:
            raise UserError(f"alignments item {i}: need a word and 0 <= start <= end (seconds), got {item!r}")
        segments.append(Segment(start, end, word, str(speaker[0]) if speaker else ""))
    return segments


def speaker_tags(segments: list[Segment]) -> dict[str, str]:
    """Timings naming two speakers (moshi-finetune's): the first named is `[S1]`, the second `[S2]`; none for
    timings that name more, or none."""
    names = list(dict.fromkeys(s.speaker for s in segments if s.speaker))
    return {name: f"[S{k + 1}]" for k, name in enumerate(names)} if len(names) <= 2 else {}


def tagged_text(segments: list[Segment], tags: dict[str, str]) -> str:
    """The segments' text, a speaker's tag before it wherever the speaker changes (and first)."""
    texts, speaker = [], None
    for segment in segments:
        tag = tags.get(segment.speaker)
        texts.append(f"{tag} {segment.text.strip()}" if tag and tag != speaker else segment.text.strip())
        speaker = tag or speaker
    return " ".join(texts)


def split_at_pauses(segments: list[Segment], total: float, limit: float) -> list[tuple[float, float, str]] | None:
    """Cut a long clip into spans no longer than `limit` seconds, each with its own segments' text (speakers
    tagged as `tagged_text` does).

    Cuts fall in the middle of pauses between timed segments (never inside one), as late as the limit
    allows. None when there is no timing, or when one segment alone is longer than the limit.
    """
    if not segments:
        return None
    ordered = sorted(segments, key=lambda s: s.start)
    if any(s.end - s.start > limit for s in ordered):
        return None
    tags = speaker_tags(ordered)
    spans, start, first = [], 0.0, 0
    for i, segment in enumerate(ordered):
        if i > first and segment.end - start > limit:
            cut = (ordered[i - 1].end + segment.start) / 2
            spans.append((start, cut, tagged_text(ordered[first:i], tags)))
            start, first = cut, i
    end = total if total - start <= limit else ordered[-1].end + min((total - ordered[-1].end) / 2, 0.25)
    spans.append((start, end, tagged_text(ordered[first:], tags)))
    if any(e - s > limit for s, e, _ in spans):
        return None
    return spans


def walk_files(root: Path) -> set[Path]:
    """Every file under `root`, following linked folders, leaving out hidden ones (`.git`, macOS `._x.wav`)."""
    found = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.update(Path(folder) / name for name in names if not name.startswith("."))
    return found
