"""`dia-tpu check FOLDER`: what in a folder someone sent (a run, a checkpoint, an export, a dataset) dia_tpu would
refuse, and why, found before anything in it is loaded.

Every file is looked at the way the command that reads it would: torch's files (`.bin`, `.pt`, `.pth`, `.pkl`)
through torch's weights-only reader with their storage memory-mapped (nothing but plain values and tensors is
built, and no tensor is read), a sharded checkpoint's metadata through `dia_tpu.artifacts.sharded`'s checks,
safetensors headers, saved configs, completion marks, the names a run's sample and evaluation indexes give,
and links. Nothing is written.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from dia_tpu.artifacts.marks import COMPLETE_FILE, completion_mark
from dia_tpu.artifacts.names import inside
from dia_tpu.artifacts.owner import kind_of
from dia_tpu.artifacts.run_folder import CONFIG_FILE, SAMPLES_INDEX, STEP_DIR
from dia_tpu.artifacts.sharded import METADATA_FILE, checked_metadata
from dia_tpu.artifacts.weights import pickle_refusal
from dia_tpu.config import ConfigError, read_saved

# Files torch writes with pickle (and reads with its weights-only reader).
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Folders training replaces by renaming: a link among them is refused.
_REPLACED = ("best", "final")


@dataclass
class Audit:
    folder: Path
    kind: str  # what the folder looks like, in words
    refused: list[str] = field(default_factory=list)  # "path: why" of what dia_tpu would refuse
    notes: list[str] = field(default_factory=list)  # worth knowing, not refused

    def lines(self) -> list[str]:
        return (
            [f"{self.folder}: {self.kind}"]
            + [f"  refused: {line}" for line in self.refused]
            + [f"  note: {line}" for line in self.notes]
        )


def audit(folder: str | Path) -> Audit:
    """Look at everything under `folder` (links are not followed) and say what would be refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    found = Audit(folder, _what(folder))
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs.sort()  # a stable order of findings
        for name in dirs + files:
            path = here / name
            if path.is_symlink():
                _link(found, folder, path)
        for name in sorted(files):
            path = here / name
            if path.is_symlink():
                continue
            _file(found, folder, path)
        for name in sorted(dirs):
            path = here / name
            if (path / METADATA_FILE).is_file() and not path.is_symlink():
                _sharded(found, folder, path)
            saved = here.name == "checkpoints" and STEP_DIR.match(name) or here == folder and name == "best"
            if saved and not path.is_symlink() and completion_mark(path) is None:
                found.notes.append(
                    f"{_rel(path, folder)}: no valid {COMPLETE_FILE}, so it is an incomplete "
                    "checkpoint: never loaded (`--resume auto` sets it aside)"
                )
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    return found


def _what(folder: Path) -> str:
    marked = kind_of(folder)
    if marked is not None:
        return f"a dia_tpu {marked} folder (marked)"
    names = {p.name for p in folder.iterdir()}
    if "manifest.json" in names and "state.json" in names:
        looks = "a prepared dataset"
    elif "checkpoints" in names or "final" in names:
        looks = "a training run's folder"
    elif COMPLETE_FILE in names:
        looks = "a training checkpoint"
    elif "config.json" in names and any(n.endswith((".safetensors", ".bin")) for n in names):
        looks = "a model folder"
    elif any(n.endswith(".pth") for n in names):
        looks = "a native checkpoint"
    else:
        looks = "no kind of folder dia_tpu writes"
    return f"{looks}, not marked as dia_tpu's: train, prepare and export write into it only if it is that"


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _link(found: Audit, folder: Path, path: Path) -> None:
    target = path.resolve()
    if target.is_relative_to(folder.resolve()):
        return
    where = f"{_rel(path, folder)} is a link to {os.readlink(path)}, outside the folder"
    replaced = path.parent == folder and path.name in _REPLACED or path.parent.name == "checkpoints"
    if replaced:
        found.refused.append(f"{where}: training replaces it by renaming and neither follows nor removes links")
    else:
        found.notes.append(f"{where}: what it points at is read as if it were in the folder")


def _file(found: Audit, folder: Path, path: Path) -> None:
    rel = _rel(path, folder)
    if path.name.startswith("custom_checkpoint_") and path.suffix == ".pkl":
        found.refused.append(f"{rel}: a pickle dia_tpu never writes and never loads (it can run code)")
    elif path.suffix in TORCH_SUFFIXES:
        if (problem := _torch_problem(path)) is not None:
            found.refused.append(f"{rel}: {problem}")
    elif path.suffix == ".safetensors":
        _safetensors(found, rel, path)
    elif path.name == CONFIG_FILE:
        _config(found, rel, path)
    elif path.name == "config.json":
        _model_config(found, rel, path)
    elif path.name == SAMPLES_INDEX and path.parent.parent.name == "samples":
        _names(found, folder, path, "name", "a sample's name")
    elif path.name == "rows.jsonl" and path.parent.parent.name == "evaluations":
        _names(found, folder, path, "id", "an utterance's id")


def _torch_problem(path: Path) -> str | None:
    """Why torch's weights-only reader (as Accelerate calls it) refuses `path`, or None. The storage is mapped,
    not read, where the file's format allows."""
    from accelerate.utils import load as accelerate_load

    try:
        try:
            accelerate_load(path, map_location="cpu", mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # the old, unzipped format cannot be mapped: read it whole
                raise
            accelerate_load(path, map_location="cpu")
    except pickle.UnpicklingError as err:
        return pickle_refusal(err)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        return f"not readable by torch ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
    return None


def _sharded(found: Audit, folder: Path, path: Path) -> None:
    try:
        checked_metadata(path, allow_bytes=path.name.startswith("optimizer"))
    except ValueError as err:
        found.refused.append(str(err).replace(f"{folder}/", "", 1))


def _safetensors(found: Audit, rel: str, path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        found.refused.append(f"{rel}: not a readable safetensors file ({err})")


def _config(found: Audit, rel: str, path: Path) -> None:
    try:
        read_saved(path)
    except ConfigError as err:
        found.refused.append(f"{rel}: not a config dia_tpu wrote ({str(err).splitlines()[-1].strip(' -')})")


def _model_config(found: Audit, rel: str, path: Path) -> None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        found.refused.append(f"{rel}: not JSON ({err})")
        return
    if isinstance(config, dict) and "auto_map" in config:
        found.notes.append(f"{rel} names code of its own (auto_map): dia_tpu never runs it (no trust_remote_code)")


def _names(found: Audit, folder: Path, path: Path, key: str, what: str) -> None:
    """The names an index gives the files beside it, as `dia-tpu report` reads them."""
    try:
        text = path.read_text(encoding="utf-8")
        entries = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
        names = [str(entry[key]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        found.refused.append(f"{_rel(path, folder)}: not an index dia_tpu wrote ({err})")
        return
    for name in names:
        try:
            inside(path.parent, f"{name}.wav", what)
        except ValueError as err:
            found.refused.append(f"{_rel(path, folder)}: {err}; the report does not show it")
