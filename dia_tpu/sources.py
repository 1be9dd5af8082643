"""Every kind of source users bring, read as one stream of `Clip`s in a fixed order.

Kinds (`prepare.kind`, or detected):
- metadata: a folder with `metadata.csv` (UTF-8, no quoting): LJSpeech's `id|text|normalized_text` with a
  `wavs/` folder, `file|text[|speaker]`, a header line naming the fields, or `prepare.columns`.
- sidecar: a folder tree of audio (or codes) files, each with a same-stem `.txt` transcript.
- hf: a Hugging Face dataset: a `save_to_disk` folder, `.parquet`/`.jsonl`/`.json`/`.csv` files, or a
  hub id (`org/name`, loaded with `datasets.load_dataset`). Audio is never decoded by `datasets` (that
  needs FFmpeg); rows give bytes, a path, or an already decoded array.

A file ending `.npy`/`.pt`/`.safetensors` holds codes encoded elsewhere; `load_codes_file` imports it.
Segment timing comes from a same-stem `.json` beside a file, or a segments column. Anything wrong with one
item (missing file, empty transcript, duplicate, ...) becomes a Clip with `problem` set, for `prepare` to
report; only a source that cannot be read at all raises.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_safetensors

from dia_tpu.config import PrepareConfig

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
CODES_EXTENSIONS = (".npy", ".pt", ".safetensors")
DATA_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
KINDS = ("metadata", "sidecar", "hf")
METADATA_FILE = "metadata.csv"
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
CODE_VALUES = 1024  # codebook size: valid codes are 0..1023


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str


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


def detect_kind(input: str, cfg: PrepareConfig) -> str:
    """The kind of `input` ("metadata", "sidecar" or "hf"): `cfg.kind`, or when that is "auto", what it looks like."""
    if cfg.kind != "auto":
        if cfg.kind not in KINDS:
            raise ValueError(f"prepare.kind: {cfg.kind!r} is not one of auto, {', '.join(KINDS)}")
        return cfg.kind
    path = Path(input)
    if path.is_file():
        if path.name == METADATA_FILE:
            return "metadata"
        if path.suffix.lower() in DATA_FORMATS:
            return "hf"
        raise ValueError(f"{input}: a file source must be a metadata.csv or a data file ({', '.join(DATA_FORMATS)})")
    if path.is_dir():
        if (path / METADATA_FILE).is_file():
            return "metadata"
        if any((path / marker).is_file() for marker in SAVED_MARKERS):
            return "hf"
        files = _walk(path)
        paired = any(f.with_suffix(".txt") in files for f in files if _is_media(f))
        # A .json beside an audio file is its segment timing, not a dataset.
        data = [f for f in files if f.suffix.lower() in DATA_FORMATS and not _is_companion(f, files)]
        if paired and data:
            raise ValueError(
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
    if HUB_ID.fullmatch(input):
        return "hf"
    raise FileNotFoundError(f"{input}: no such file or folder, and not a Hugging Face hub id (org/name)")


def read_clips(input: str, cfg: PrepareConfig) -> Iterator[Clip]:
    """The clips of `input` in source order, numbered 0..n-1, texts normalised, duplicates marked."""
    readers = {"metadata": _read_metadata, "sidecar": _read_sidecar, "hf": _read_hf}
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


def normalize_text(text: str) -> str:
    """NFC, runs of whitespace collapsed to one space, stripped; [S1]/[xx] tags are left as they are."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


# ---- metadata.csv


@dataclass
class _Fields:
    names: list[str]
    text: int
    audio: int
    speaker: int | None
    language: int | None
    by_id: bool  # the audio field is an LJSpeech-style id: the file is wavs/<id>.wav

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
        raise ValueError(f"{csv} is empty: expected one line per clip")


def _metadata_fields(first: bytes, root: Path, cfg, csv: Path) -> tuple[_Fields, bool]:
    """The field layout, and whether the first line is a header to skip."""
    values = [v.strip() for v in first.decode("utf-8", errors="replace").split(cfg.delimiter)]
    header = False
    if cfg.columns:
        names = [str(name) for name in cfg.columns]
        header = values == names
    elif cfg.text_column in values or values[0] == "file":
        names, header = values, True
    elif (root / "wavs").is_dir() and not _is_media(Path(values[0])):
        names = ["id", "text", "normalized_text"]
    else:
        names = ["file", "text", "speaker"]
    audio = next((name for name in (cfg.audio_column, "file", "id") if name in names), None)
    missing = [] if cfg.text_column in names else [f"the text (prepare.text_column={cfg.text_column!r})"]
    if audio is None:
        missing.append(f"the audio (prepare.audio_column={cfg.audio_column!r}, or a 'file' or 'id' field)")
    if missing:
        raise ValueError(
            f"{csv}: no field for {' or '.join(missing)}; its fields are {'|'.join(names)} "
            "(set prepare.columns to name them)"
        )
    position = {name: i for i, name in enumerate(names)}
    layout = _Fields(names, position[cfg.text_column], position[audio], position.get(cfg.speaker_column),
                     position.get(cfg.language_column), audio == "id")  # fmt: skip
    return layout, header


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
        name = next((f"wavs/{name}{ext}" for ext in AUDIO_EXTENSIONS if (root / f"wavs/{name}{ext}").is_file()),
                    f"wavs/{name}.wav")  # fmt: skip
    clip = Clip(0, Path(os.path.normpath(name)).as_posix(), get(fields.text), get(fields.speaker),
                get(fields.language))  # fmt: skip
    _attach_file(clip, root, name, absolute_ok=False)
    return where, clip


# ---- sidecar folders


def _read_sidecar(input: str, cfg: PrepareConfig) -> Iterator[tuple[str, Clip]]:
    root = Path(os.path.abspath(input))
    if not root.is_dir():
        raise FileNotFoundError(f"{input}: not a folder (a sidecar source is a folder of audio files with .txt)")
    files = _walk(root)
    media = sorted((f for f in files if _is_media(f)), key=lambda f: f.relative_to(root).parts)
    if not media:
        raise FileNotFoundError(f"{input}: no audio ({', '.join(AUDIO_EXTENSIONS)}) or codes files under it")
    for path in media:
        source_id = path.relative_to(root).as_posix()
        clip = Clip(0, source_id, "")
        _attach_file(clip, root, source_id, absolute_ok=False)
        transcript = path.with_suffix(".txt")
        if transcript not in files:
            clip.problem = clip.problem or "no transcript (.txt) beside it"
        else:
            try:
                clip.text = transcript.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                clip.problem = clip.problem or f"transcript is not UTF-8: {transcript.name}"
        yield source_id, clip


# ---- Hugging Face datasets


def _read_hf(input: str, cfg: PrepareConfig) -> Iterator[tuple[str, Clip]]:
    dataset, split, root = _load_hf(input, cfg)
    optional = (cfg.speaker_column, cfg.language_column, cfg.segments_column, "id")
    names = dataset.column_names
    if names is not None:  # streaming sources may learn their columns only from the first row
        _require_columns(names, cfg, input)
        dataset = dataset.select_columns([c for c in (cfg.audio_column, cfg.text_column, *optional) if c in names])
        if isinstance(dataset.features[cfg.audio_column], datasets.Audio):
            # Rows then carry the file's bytes or path; decoding here would need FFmpeg/torchcodec.
            dataset = dataset.cast_column(cfg.audio_column, datasets.Audio(decode=False))
    for row_index, row in enumerate(dataset):
        if names is None:
            names = list(row)
            _require_columns(names, cfg, input)
        where = f"{split}/{row_index}"
        source_id = str(row["id"]) if row.get("id") is not None else where
        clip = Clip(0, source_id, _hf_text(row[cfg.text_column]), _hf_str(row.get(cfg.speaker_column)),
                    _hf_str(row.get(cfg.language_column)))  # fmt: skip
        _attach_hf_audio(clip, row[cfg.audio_column], root)
        if row.get(cfg.segments_column) is not None and clip.problem is None:
            try:
                clip.segments = _segments(row[cfg.segments_column])
            except ValueError as err:
                clip.problem = f"bad {cfg.segments_column!r} column: {err}"
        yield where, clip


def _load_hf(input: str, cfg: PrepareConfig):
    """(dataset, split name, folder that relative audio paths start from, or None for the hub)."""
    path = Path(input)
    if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
        # save_to_disk output is memory-mapped, so `streaming` has nothing to add here.
        return (*_pick_split(datasets.load_from_disk(str(path)), cfg.split, input, data_files=False), path)
    if path.exists():
        fmt = _data_format(path)
        where = {"data_files": str(path)} if path.is_file() else {"data_dir": str(path)}
        loaded = datasets.load_dataset(fmt, **where, streaming=cfg.streaming)
        root = path.parent if path.is_file() else path
        return (*_pick_split(loaded, cfg.split, input, data_files=True), Path(os.path.abspath(root)))
    try:
        loaded = datasets.load_dataset(input, cfg.hf_config, split=cfg.split, streaming=cfg.streaming)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        # A mistyped local path looks like a hub id; say both things that were tried.
        raise FileNotFoundError(f"{input}: not a local file or folder, and not loadable from the hub: {err}") from err
    return loaded, cfg.split, None


def _pick_split(loaded, split: str, input: str, data_files: bool):
    if not isinstance(loaded, dict):
        return loaded, split
    if split in loaded:
        return loaded[split], split
    # Data files whose names say no split all land in "train", whatever split was asked for.
    if data_files and list(loaded) == ["train"]:
        return loaded["train"], "train"
    raise ValueError(f"{input}: no split {split!r} (prepare.split); its splits are {', '.join(loaded)}")


def _data_format(path: Path) -> str:
    files = [path] if path.is_file() else [f for f in _walk(path) if f.suffix.lower() in DATA_FORMATS]
    formats = sorted({DATA_FORMATS[f.suffix.lower()] for f in files if f.suffix.lower() in DATA_FORMATS})
    if not formats:
        raise FileNotFoundError(f"{path}: no data files ({', '.join(DATA_FORMATS)}) in it")
    if len(formats) > 1:
        raise ValueError(f"{path}: holds data files of several formats ({', '.join(formats)}); point the input "
                         "at the files of one format")  # fmt: skip
    return formats[0]


def _require_columns(names: list[str], cfg, input: str) -> None:
    missing = [f"{key}={name!r}" for key, name in (("prepare.audio_column", cfg.audio_column),
               ("prepare.text_column", cfg.text_column)) if name not in names]  # fmt: skip
    if missing:
        raise ValueError(f"{input}: no column for {', '.join(missing)}; its columns are {', '.join(names)}")


def _hf_text(value) -> str:
    if isinstance(value, (list, tuple)):  # music tags given as a list
        return ", ".join(str(tag) for tag in value)
    return "" if value is None else str(value)


def _hf_str(value) -> str:
    return "" if value is None else str(value).strip()


def _attach_hf_audio(clip: Clip, value, root: Path | None) -> None:
    """Set the clip's audio from any form an HF row's audio takes; bytes win over a path."""
    if value is None or (isinstance(value, (str, bytes)) and not value):
        clip.problem = "no audio in this row"
    elif isinstance(value, dict):
        if value.get("bytes"):
            clip.audio = AudioRef(data=bytes(value["bytes"]))
        elif value.get("array") is not None:
            if value.get("sampling_rate") is None:
                clip.problem = "decoded audio array without a sampling_rate"
                return
            array = np.asarray(value["array"])
            # Decoded multi-channel audio in datasets is [channels, samples]; AudioRef holds [samples, channels].
            if array.ndim == 2 and array.shape[0] <= 2 < array.shape[1]:
                array = array.T
            clip.audio = AudioRef(array=array, rate=int(value["sampling_rate"]))
        elif value.get("path"):
            _attach_hf_path(clip, str(value["path"]), root)
        else:
            clip.problem = "no audio in this row"
    elif isinstance(value, bytes):
        clip.audio = AudioRef(data=value)
    elif isinstance(value, str):
        _attach_hf_path(clip, value, root)
    else:
        clip.problem = f"audio of an unknown form ({type(value).__name__})"


def _attach_hf_path(clip: Clip, name: str, root: Path | None) -> None:
    if "://" in name:
        clip.problem = f"remote audio path without bytes: {name}"
    elif root is None:
        # Hub datasets give absolute paths into the local cache.
        _attach_file(clip, Path(os.path.abspath(".")), name, absolute_ok=True)
    else:
        # datasets itself writes absolute paths (a cast Audio column), so they are taken as they are.
        _attach_file(clip, root, name, absolute_ok=True)


# ---- shared


def _attach_file(clip: Clip, root: Path, name: str, absolute_ok: bool) -> None:
    """Point the clip at `root/name` (audio, or codes by suffix), with its same-stem .json timing if any;
    or set the clip's problem. Paths are normalised without resolving symlinks, so a linked audio folder
    inside the dataset still counts as inside it."""
    path = Path(os.path.normpath(root / name))
    if not path.is_relative_to(root) and not (absolute_ok and Path(name).is_absolute()):
        clip.problem = "path escapes the dataset folder"
        return
    if not path.is_file():
        clip.problem = "missing file"
        return
    if path.suffix.lower() in CODES_EXTENSIONS:
        clip.codes_file = path
    else:
        clip.audio = AudioRef(path=path)
    timing = path.with_suffix(".json")
    if timing.is_file():
        try:
            clip.segments = _segments(json.loads(timing.read_bytes()))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            clip.problem = f"bad segment timing in {timing.name}: {err}"


def _segments(value) -> list[Segment]:
    """[{start, end, text}, ...] (or a dict of such lists, or Whisper's {"segments": [...]}) as Segments."""
    if isinstance(value, dict) and "segments" in value:
        value = value["segments"]
    if isinstance(value, dict):  # a datasets Sequence of structs reads back as a dict of lists
        keys = ("start", "end", "text")
        if not all(isinstance(value.get(k), list) for k in keys) or len({len(value[k]) for k in keys}) != 1:
            raise ValueError("expected equal-length start, end and text lists")
        value = [dict(zip(keys, item, strict=True)) for item in zip(*(value[k] for k in keys), strict=True)]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {{start, end, text}}, got {type(value).__name__}")
    segments = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not all(k in item for k in ("start", "end", "text")):
            raise ValueError(f"item {i} is not a {{start, end, text}} object")
        start, end, text = item["start"], item["end"], item["text"]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end))
        if not numbers or not 0 <= start <= end or not isinstance(text, str):
            raise ValueError(f"item {i}: need 0 <= start <= end (seconds) and a text, got {item}")
        segments.append(Segment(float(start), float(end), text))
    return segments


def _walk(root: Path) -> set[Path]:
    """Every file under `root`, following linked folders, leaving out hidden ones (`.git`, macOS `._x.wav`)."""
    found = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.update(Path(folder) / name for name in names if not name.startswith("."))
    return found


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS + CODES_EXTENSIONS


def _is_companion(path: Path, files: set[Path]) -> bool:
    """A .json with the stem of an audio or codes file beside it: that file's segment timing."""
    return path.suffix.lower() == ".json" and any(path.with_suffix(ext) in files for ext in
                                                  AUDIO_EXTENSIONS + CODES_EXTENSIONS)  # fmt: skip


# ---- codes encoded elsewhere


def load_codes_file(path: Path, channels: int, layout: str) -> np.ndarray:
    """Codes from a .npy, .pt or .safetensors file as int16 [T, C], checked against the codec.

    `layout` is "CT", "TC", or "auto" (the axis whose size is `channels`). Raises ValueError naming the file.
    """
    path = Path(path)
    codes = _read_codes_array(path)
    if codes.ndim != 2:
        raise ValueError(f"{path}: codes must be 2-D [frames, codebooks] or [codebooks, frames], got {codes.shape}")
    if layout == "auto":
        matches = [axis for axis in (0, 1) if codes.shape[axis] == channels]
        if len(matches) == 2:
            raise ValueError(f"{path}: shape {codes.shape} is square, so the layout is ambiguous; "
                             "set prepare.codes_layout to CT or TC")  # fmt: skip
        if not matches:
            raise ValueError(f"{path}: shape {codes.shape} has no axis of {channels} codebooks (the codec's; "
                             "check prepare.stereo and prepare.codes_layout)")  # fmt: skip
        layout = "CT" if matches[0] == 0 else "TC"
    if layout not in ("CT", "TC"):
        raise ValueError(f"prepare.codes_layout: {layout!r} is not one of auto, CT, TC")
    codes = codes.T if layout == "CT" else codes
    if codes.shape[1] != channels:
        raise ValueError(f"{path}: {codes.shape[1]} codebooks with codes_layout {layout}, the codec has {channels}")
    if codes.shape[0] == 0:
        raise ValueError(f"{path}: no frames")
    if codes.dtype.kind not in "iu":
        raise ValueError(f"{path}: codes must be integers, got {codes.dtype}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= CODE_VALUES:
        raise ValueError(f"{path}: codes must be in 0..{CODE_VALUES - 1}, got min {low} max {high}")
    return np.ascontiguousarray(codes, dtype=np.int16)


def _read_codes_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix not in CODES_EXTENSIONS:
        raise ValueError(f"{path}: not a codes file ({', '.join(CODES_EXTENSIONS)})")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            loaded = load_safetensors(path)
    except (OSError, EOFError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        raise ValueError(f"{path}: cannot read codes: {err}") from err
    if isinstance(loaded, torch.Tensor):
        loaded = {"codes": loaded}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a tensor or a dict of tensors, got {type(loaded).__name__}")
    return _one_array(path, loaded)


def _one_array(path: Path, tensors: dict) -> np.ndarray:
    """The "codes" entry, or the only tensor, as a numpy array."""
    arrays = {k: v for k, v in tensors.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if "codes" in arrays:
        value = arrays["codes"]
    elif len(arrays) == 1:
        value = next(iter(arrays.values()))
    else:
        raise ValueError(f"{path}: expected one tensor or a 'codes' entry, found {sorted(map(str, tensors)) or 'none'}")
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            raise ValueError(f"{path}: codes must be integers, got {value.dtype}")
        return value.numpy()
    return value
