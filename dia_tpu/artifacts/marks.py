"""A checkpoint's completion mark: written last, with every file's size, so that a folder without a whole mark
is never loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dia_tpu.artifacts.writes import sync_dir

# Written last into a finished checkpoint, with every file's size: a folder without it is never loaded.
COMPLETE_FILE = "checkpoint.json"


def mark_complete(folder: Path, step: int) -> None:
    """Flush every file of a finished checkpoint to disk, then write its completion mark: the step and every
    file with its size."""
    files = file_sizes(folder)
    for name in files:
        with open(folder / name, "rb") as handle:
            os.fsync(handle.fileno())
    with open(folder / COMPLETE_FILE, "w") as handle:
        handle.write(mark_text(step, files))
        handle.flush()
        os.fsync(handle.fileno())
    sync_dir(folder)


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` except its completion mark, by path relative to it (with /), with its size."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / COMPLETE_FILE)
    return {file.relative_to(folder).as_posix(): file.stat().st_size for file in files}


def mark_text(step: int, files: dict[str, int]) -> str:
    return json.dumps({"step": step, "files": files}, indent=2) + "\n"


def completion_mark(folder: Path) -> dict | None:
    """The mark of a finished checkpoint ({"step", "files": {name: size}}), or None when `folder` is not one:
    no mark, or a file it lists is missing or has another size."""
    try:
        text = (folder / COMPLETE_FILE).read_text()
    except OSError:
        return None
    return valid_mark(text, lambda name: (folder / name).stat().st_size)


def valid_mark(text: str | bytes, size_of) -> dict | None:
    """A completion mark read from `text`, when every file it lists has its size (`size_of(name)`, which may
    raise OSError for a missing file); None otherwise. Local folders and mirrors check their marks with it."""
    try:
        mark = json.loads(text)
        whole = all(size_of(name) == size for name, size in mark["files"].items())
        return mark if whole and isinstance(mark["step"], int) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_complete(folder: Path) -> bool:
    return completion_mark(folder) is not None
