"""Names and paths that come from data files (a prompt's id, a sample's name in an index, a file a mirror's
completion mark lists): turned into file names only by `file_name`, and joined to a folder only by `inside`,
so none of them can lead out of the folder it belongs to."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from dia_tpu.errors import UserError

# Longest file name made from a data file's name (most filesystems allow 255 bytes; room is left for suffixes).
_LONGEST = 120


def file_name(name: str) -> str:
    """`name` as one file or folder name: runs of anything but letters, digits, `.`, `-` and `_` become `_`,
    leading dots go (no hidden names, no `..`), and it is cut to a length every filesystem takes."""
    cleaned = re.sub(r"[^\w.-]+", "_", str(name)).lstrip(".")[:_LONGEST]
    return cleaned or "_"


def inside(folder: Path, name: str, what: str = "a name") -> Path:
    """`folder / name` for a relative `name` (with `/` between parts) that stays inside `folder`, also once links
    are followed; a ValueError names it otherwise."""
    text = str(name)
    parts = PurePosixPath(text).parts
    if not parts or PurePosixPath(text).is_absolute() or ".." in parts or "\\" in text or "\0" in text:
        raise UserError(f"{what} {text!r} leads out of {folder}")
    path = folder.joinpath(*parts)
    if os.path.lexists(path) and not path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"{what} {text!r} is a link out of {folder}")
    return path
