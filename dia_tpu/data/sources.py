"""Every kind of source users bring, read as one stream of `Clip`s (`dia_tpu.data.clips`) in a fixed order.

Kinds (`prepare.kind`, or detected):
- metadata: a folder with `metadata.csv` (UTF-8, no quoting): LJSpeech's `id|text|normalized_text` with a
  `wavs/` folder, `file|text[|speaker]`, a header line naming the fields, or `prepare.columns`.
- sidecar: a folder tree of audio (or codes) files, each with a same-stem `.txt` transcript, or a same-stem
  `.json` of timed words alone (moshi-finetune's folders: the transcript is its words, speakers tagged).
- hf: a Hugging Face dataset: a `save_to_disk` folder, `.parquet`/`.jsonl`/`.json`/`.csv` files, or a
  hub id (`org/name`); read by `dia_tpu.data.hf_source`.

A file ending `.npy`/`.pt`/`.safetensors` holds codes encoded elsewhere; `dia_tpu.data.codes_files` imports it.
Segment timing comes from a same-stem `.json` beside a file, or a segments column. Anything wrong with one
item (missing file, empty transcript, duplicate, ...) becomes a Clip with `problem` set, for `prepare` to
report; only a source that cannot be read at all raises.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dia_tpu.config import SOURCE_KINDS, PrepareConfig
from dia_tpu.data.clips import Clip, attach_file, normalize_text, speaker_tags, tagged_text, walk_files
from dia_tpu.data.codes_files import CODES_EXTENSIONS
from dia_tpu.data.hf_source import DATA_FORMATS, SAVED_MARKERS, read_hf
from dia_tpu.errors import UserError
from dia_tpu.hub import is_hub_id

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
KINDS = tuple(kind for kind in SOURCE_KINDS if kind != "auto")
METADATA_FILE = "metadata.csv"


def detect_kind(input: str, cfg: PrepareConfig) -> str:
    """The kind of `input` ("metadata", "sidecar" or "hf"): `cfg.kind`, or when that is "auto", what it looks like."""
    if cfg.kind != "auto":
        if cfg.kind not in KINDS:
            raise UserError(f"prepare.kind: {cfg.kind!r} is not one of auto, {', '.join(KINDS)}")
        return cfg.kind
    path = Path(input)
    if path.is_file():
        if path.name == METADATA_FILE:
            return "metadata"
        if path.suffix.lower() in DATA_FORMATS:
            return "hf"
        raise UserError(f"{input}: a file source must be a metadata.csv or a data file ({', '.join(DATA_FORMATS)})")
    if path.is_dir():
        if (path / METADATA_FILE).is_file():
            return "metadata"
        if any((path / marker).is_file() for marker in SAVED_MARKERS):
            return "hf"
        files = walk_files(path)
        paired = any(f.with_suffix(".txt") in files for f in files if _is_media(f))
        # A .json beside an audio file is its segment timing, not a dataset.
        data = [f for f in files if f.suffix.lower() in DATA_FORMATS and not _is_companion(f, files)]
        if paired and data:
            raise UserError(
                f"{input}: holds both audio with .txt transcripts and data files ({data[0].name}); "
                "set prepare.kind to sidecar or hf"
            )
        if data:
            return "hf"
        if paired:
            return "sidecar"
        raise FileNotFoundError(
            f"{input}: found no metadata.csv, no Hugging Face dataset (dataset_info.json, state.json, "
            f"dataset_dict.json or {'/'.join(DATA_FORMATS)} files), and no audio or codes files with "
            "same-stem .txt transcripts"
        )
    if is_hub_id(input):
        return "hf"
    raise FileNotFoundError(f"{input}: no such file or folder, and not a Hugging Face hub id (org/name)")


def read_clips(input: str, cfg: PrepareConfig) -> Iterator[Clip]:
    """The clips of `input` in source order, numbered 0..n-1, texts normalised, duplicates marked."""
    readers = {"metadata": _read_metadata, "sidecar": _read_sidecar, "hf": read_hf}
    items = readers[detect_kind(input, cfg)](input, cfg)
    ids: set[str] = set()
    files: dict[Path, str] = {}  # each file -> the source_id that listed it first
    for index, (where, clip) in enumerate(items):
        clip.index = index
        clip.text = normalize_text(clip.text) if cfg.normalize_text else clip.text
        file = clip.codes_file or (clip.audio.path if clip.audio is not None else None)
        first = files.get(file) if file is not None else None
        if clip.source_id in ids:
            # Ids must stay unique for the report; the location tells the two apart.
            first, clip.source_id = clip.source_id, f"{clip.source_id} ({where})"
        if clip.problem is None and first is not None:
            clip.problem = f"duplicate of {first}"
        if clip.problem is None and not clip.text.strip():
            clip.problem = "empty transcript"
        ids.add(clip.source_id)
        if file is not None:
            files.setdefault(file, clip.source_id)
        yield clip


# ---- metadata.csv


@dataclass
class _Fields:
    names: list[str]
    text: int
    audio: int
    speaker: int | None
    language: int | None
    by_id: bool  # the audio field is an LJSpeech-style id: the file is wavs/<id>.wav
    wavs: bool  # a wavs/ folder beside metadata.csv, where a bare file name is also looked for

    @property
    def required(self) -> int:
        return max(self.text, self.audio) + 1


def _read_metadata(input: str, cfg: PrepareConfig) -> Iterator[tuple[str, Clip]]:
    path = Path(input)
    root = path.parent if path.name == METADATA_FILE and path.is_file() else path
    csv = root / METADATA_FILE
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found: a metadata source is a folder with a metadata.csv")
    root = Path(os.path.abspath(root))
    fields = None
    with open(csv, "rb") as lines:
        # Bytes, decoded line by line, so one line that is not UTF-8 does not cost the others.
        for number, raw in enumerate(lines, start=1):
            raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            if fields is None:
                fields, header = _metadata_fields(raw, root, cfg, csv)
                if header:
                    continue
            yield _metadata_clip(raw, number, fields, root, cfg)
    if fields is None:
        raise UserError(f"{csv} is empty: expected one line per clip")


def _metadata_fields(first: bytes, root: Path, cfg, csv: Path) -> tuple[_Fields, bool]:
    """The field layout, and whether the first line is a header to skip."""
    values = [v.strip() for v in first.decode("utf-8", errors="replace").split(cfg.delimiter)]
    header, wavs = False, (root / "wavs").is_dir()
    if cfg.columns:
        names = [str(name) for name in cfg.columns]
        header = values == names
    elif cfg.text_column in values or values[0] == "file":
        names, header = values, True
    elif wavs and not _is_media(Path(values[0])):
        names = ["id", "text", "normalized_text"]
    elif wavs or (len(values) > 2 and _same_words(values[1], values[2])):
        # LJSpeech's layout with file names (`clip01.wav|text|normalized text`): the third field is the
        # text again, never a speaker.
        names = ["file", "text", "normalized_text"]
    else:
        names = ["file", "text", "speaker"]
    audio = next((name for name in (cfg.audio_column, "file", "id") if name in names), None)
    missing = [] if cfg.text_column in names else [f"the text (prepare.text_column={cfg.text_column!r})"]
    if audio is None:
        missing.append(f"the audio (prepare.audio_column={cfg.audio_column!r}, or a 'file' or 'id' field)")
    if missing:
        raise UserError(
            f"{csv}: no field for {' or '.join(missing)}; its fields are {'|'.join(names)} "
            "(set prepare.columns to name them)"
        )
    position = {name: i for i, name in enumerate(names)}
    layout = _Fields(
        names,
        position[cfg.text_column],
        position[audio],
        position.get(cfg.speaker_column),
        position.get(cfg.language_column),
        audio == "id",
        wavs,
    )
    return layout, header


def _same_words(text: str, other: str) -> bool:
    """Whether `other` reads as `text` rewritten (a normalised transcript) rather than a label: half of its
    words, compared lower-case without punctuation, are words of `text`."""
    words = {w.strip(".,;:!?\"'()").lower() for w in text.split()}
    theirs = [w.strip(".,;:!?\"'()").lower() for w in other.split()]
    return bool(theirs) and sum(w in words for w in theirs) * 2 >= len(theirs)


def _metadata_clip(raw: bytes, number: int, fields: _Fields, root: Path, cfg: PrepareConfig) -> tuple[str, Clip]:
    where = f"{METADATA_FILE}:{number}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return where, Clip(0, where, "", problem="transcript is not UTF-8")
    values = [v.strip() for v in line.split(cfg.delimiter)]
    if not fields.required <= len(values) <= len(fields.names):
        low, high = fields.required, len(fields.names)
        expected = f"{low}" if low == high else f"{low} to {high}"
        return where, Clip(0, where, "", problem=f"expected {expected} fields, got {len(values)}")

    def get(i: int | None) -> str:
        return values[i] if i is not None and i < len(values) else ""

    name = values[fields.audio]
    if fields.by_id:
        name = next(
            (f"wavs/{name}{ext}" for ext in AUDIO_EXTENSIONS if (root / f"wavs/{name}{ext}").is_file()),
            f"wavs/{name}.wav",
        )
    clip = Clip(0, Path(os.path.normpath(name)).as_posix(), get(fields.text), get(fields.speaker), get(fields.language))
    # A bare file name is looked for beside metadata.csv, then under wavs/ as in LJSpeech's layout.
    elsewhere = (f"wavs/{name}",) if fields.wavs and not fields.by_id and len(Path(name).parts) == 1 else ()
    attach_file(clip, root, name, absolute_ok=False, elsewhere=elsewhere)
    return where, clip


# ---- sidecar folders


def _read_sidecar(input: str, cfg: PrepareConfig) -> Iterator[tuple[str, Clip]]:
    root = Path(os.path.abspath(input))
    if not root.is_dir():
        raise FileNotFoundError(f"{input}: not a folder (a sidecar source is a folder of audio files with .txt)")
    files = walk_files(root)
    media = sorted((f for f in files if _is_media(f)), key=lambda f: f.relative_to(root).parts)
    if not media:
        raise FileNotFoundError(f"{input}: no audio ({', '.join(AUDIO_EXTENSIONS)}) or codes files under it")
    for path in media:
        source_id = path.relative_to(root).as_posix()
        clip = Clip(0, source_id, "")
        attach_file(clip, root, source_id, absolute_ok=False)
        transcript = path.with_suffix(".txt")
        if transcript not in files and clip.segments:
            # moshi-finetune's folders: the words are in the timing file alone.
            clip.text = tagged_text(clip.segments, speaker_tags(clip.segments))
        elif transcript not in files:
            clip.problem = clip.problem or "no transcript (.txt) beside it"
        else:
            try:
                clip.text = transcript.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                clip.problem = clip.problem or f"transcript is not UTF-8: {transcript.name}"
        yield source_id, clip


# ---- audio and codes files


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS + CODES_EXTENSIONS


def _is_companion(path: Path, files: set[Path]) -> bool:
    """A .json with the stem of an audio or codes file beside it: that file's segment timing."""
    return path.suffix.lower() == ".json" and any(
        path.with_suffix(ext) in files for ext in AUDIO_EXTENSIONS + CODES_EXTENSIONS
    )
