"""Hugging Face datasets as a source of `Clip`s: a `save_to_disk` folder, `.parquet`/`.jsonl`/`.json`/`.csv`
files, or a hub id (`org/name`, loaded with `datasets.load_dataset`). Audio is never decoded by `datasets`
(that needs FFmpeg); rows give bytes, a path, or an already decoded array.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError

from dia_tpu.config import PrepareConfig
from dia_tpu.console import first_line
from dia_tpu.data.clips import AudioRef, Clip, attach_file, parse_segments, walk_files
from dia_tpu.errors import UserError
from dia_tpu.hub import from_hub

DATA_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def read_hf(input: str, cfg: PrepareConfig) -> Iterator[tuple[str, Clip]]:
    """(where, clip) for each row of the dataset at `input`, in order; `where` is "split/row"."""
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
        clip = Clip(
            0,
            source_id,
            _hf_text(row[cfg.text_column]),
            _hf_str(row.get(cfg.speaker_column)),
            _hf_str(row.get(cfg.language_column)),
        )
        _attach_hf_audio(clip, row[cfg.audio_column], root)
        if row.get(cfg.segments_column) is not None and clip.problem is None:
            try:
                clip.segments = parse_segments(row[cfg.segments_column])
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
        try:
            loaded = datasets.load_dataset(fmt, data_files=_data_files(path, fmt), streaming=cfg.streaming)
        except DatasetGenerationError as err:
            cause = first_line(err.__cause__) if err.__cause__ is not None else first_line(err)
            raise UserError(f"{input}: its {fmt} files cannot be read as rows ({cause})") from err
        root = path.parent if path.is_file() else path
        return (*_pick_split(loaded, cfg.split, input, data_files=True), Path(os.path.abspath(root)))
    with from_hub("--input", input, "the downloaded folder", repo_type="dataset"):
        loaded = datasets.load_dataset(input, cfg.hf_config, split=cfg.split, streaming=cfg.streaming)
    return loaded, cfg.split, None


def _pick_split(loaded, split: str, input: str, data_files: bool):
    if not isinstance(loaded, dict):
        return loaded, split
    if split in loaded:
        return loaded[split], split
    # Data files whose names say no split all land in "train", whatever split was asked for.
    if data_files and list(loaded) == ["train"]:
        return loaded["train"], "train"
    raise UserError(f"{input}: no split {split!r} (prepare.split); its splits are {', '.join(loaded)}")


def _data_files(path: Path, fmt: str):
    """The data files of `path` by split, found as `datasets` finds a folder's splits (`train.jsonl`,
    `test-00000.parquet`, ... or all in "train"), but only those of `fmt`: audio and other files beside them are
    the dataset's media, not its rows."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if path.is_file():
        return str(path)
    extensions = [suffix for suffix, name in DATA_FORMATS.items() if name == fmt]
    return DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path), allowed_extensions=extensions)


def _data_format(path: Path) -> str:
    files = [path] if path.is_file() else [f for f in walk_files(path) if f.suffix.lower() in DATA_FORMATS]
    formats = sorted({DATA_FORMATS[f.suffix.lower()] for f in files if f.suffix.lower() in DATA_FORMATS})
    if not formats:
        raise FileNotFoundError(f"{path}: no data files ({', '.join(DATA_FORMATS)}) in it")
    if len(formats) > 1:
        raise UserError(
            f"{path}: holds data files of several formats ({', '.join(formats)}); point the input "
            "at the files of one format"
        )
    return formats[0]


def _require_columns(names: list[str], cfg, input: str) -> None:
    missing = [
        f"{key}={name!r}"
        for key, name in (("prepare.audio_column", cfg.audio_column), ("prepare.text_column", cfg.text_column))
        if name not in names
    ]
    if missing:
        raise UserError(f"{input}: no column for {', '.join(missing)}; its columns are {', '.join(names)}")


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
        attach_file(clip, Path(os.path.abspath(".")), name, absolute_ok=True)
    else:
        # datasets itself writes absolute paths (a cast Audio column), so they are taken as they are.
        attach_file(clip, root, name, absolute_ok=True)
