"""Writing saved folders safely: a finished folder put in place by renames, the renames made durable, and a
failed write explained (a full disk said plainly)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from dia_tpu.artifacts.owner import NotOurs, aside
from dia_tpu.console import first_line


def put_in_place(building: Path, path: Path) -> None:
    """Replace `path` with the finished folder `building` by renames, so that at every moment one of the two
    is whole; then make the renames durable. The caller has proven `path` dia_tpu's (`dia_tpu.artifacts.owner`);
    a symbolic link is refused here whatever it points at."""
    if path.is_symlink():
        raise NotOurs(
            f"{path} is a symbolic link (to {os.readlink(path)}): dia_tpu replaces it by renaming folders "
            "and neither follows nor removes links; remove the link, its target is not touched"
        )
    if path.exists():
        old = aside(path, "replaced")
        path.rename(old)
        building.rename(path)
        shutil.rmtree(old)
    else:
        building.rename(path)
    sync_dir(path.parent)


# Free space below which a failed write is put down to a full disk.
_FULL = 16 * 2**20


def write_failure(err: BaseException, path: Path) -> str:
    """Why a write under `path` failed, saying so plainly when the disk is full (torch's and pyarrow's own
    messages do not)."""
    where = existing_parent(path)
    free = shutil.disk_usage(where).free
    if getattr(err, "errno", None) == errno.ENOSPC or free < _FULL:
        return f"the disk is full: {free / 2**20:.1f} MiB free on {where}; {first_line(err)}"
    return first_line(err)


def existing_parent(path: Path) -> Path:
    """The nearest folder above `path` that exists: the disk its free space is read from."""
    return next(p for p in (path.parent, *path.parents) if p.exists())


def sync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (the directory entry itself)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
