"""Which folders are dia_tpu's to replace or delete: those it marked when it made them.

Every folder dia_tpu writes as a whole (a run's `output.dir`, an export, a prepared dataset, prepare's work
folder, a mirror) holds `.dia_tpu.json`, naming what the folder is. dia_tpu writes into, replaces or deletes a
folder only when it is new, empty, or marked as the same kind; any other folder is refused with a line naming
what is in it, before any work. A folder with the right name (`best/`, `final/`, a `manifest.json`) proves
nothing.

Folders written before the mark existed are recognised by their contents where that is unambiguous (a run's
config and checkpoints with their completion marks, a dataset's manifest beside its `datasets` table) and
marked then; see `claim`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dia_tpu import __version__
from dia_tpu.errors import UserError, UserFileInTheWay

MARK_FILE = ".dia_tpu.json"
# The kinds of folder dia_tpu marks: a run's output.dir, an export (any form), a prepared dataset, prepare's work
# folder beside it, a mirror's root, transcribe's output, evaluate's output.
RUN, EXPORT, DATASET, PREPARE_WORK, MIRROR = "run", "export", "dataset", "prepare work", "mirror"
TRANSCRIPTION, EVALUATION = "transcription", "evaluation"


class NotOurs(UserFileInTheWay):
    """A folder dia_tpu would write into, replace or delete that it cannot prove it made."""


def mark(folder: Path, kind: str) -> None:
    """Mark `folder` as dia_tpu's `kind` of folder."""
    (folder / MARK_FILE).write_text(json.dumps({"kind": kind, "dia_tpu": __version__}) + "\n")


def kind_of(folder: Path) -> str | None:
    """What dia_tpu marked `folder` as ("run", "export", ...), or None when it holds no valid mark."""
    try:
        found = json.loads((folder / MARK_FILE).read_text())
    except (OSError, ValueError):
        return None
    kind = found.get("kind") if isinstance(found, dict) else None
    return kind if isinstance(kind, str) else None


def claim(folder: Path, kind: str, what: str, earlier: Callable[[Path], bool] | None = None) -> bool:
    """Make `folder` dia_tpu's `kind` of folder to write into: create and mark it when it does not exist, mark it
    when it is empty or `earlier(folder)` recognises one written before marks existed, accept it when it is
    marked so already; refuse anything else (NotOurs, naming `what` and a few of its entries). Returns whether
    the folder was created here."""
    if not folder.exists():
        try:
            folder.mkdir(parents=True)
        except OSError as err:
            raise UserError(f"{what} {folder} cannot be created ({err.strerror or err})") from err
        mark(folder, kind)
        return True
    if not folder.is_dir():
        raise NotOurs(f"{what} {folder} is a file, not a folder")
    found = kind_of(folder)
    if found == kind:
        return False
    if found is not None:
        raise NotOurs(f"{what} {folder} is a dia_tpu {found} folder, not a {kind} folder; give another folder")
    if any(folder.iterdir()) and not (earlier is not None and earlier(folder)):
        raise NotOurs(
            f"{what} {folder} holds files dia_tpu did not write ({listing(folder)}); dia_tpu writes only "
            f"into a new or empty folder or its own {kind} folder: give another one"
        )
    try:
        mark(folder, kind)
    except OSError as err:
        raise UserError(f"{what} {folder} is not writable ({err.strerror or err})") from err
    return False


def check_replaceable(path: Path, kind: str, what: str, earlier: Callable[[Path], bool] | None = None) -> None:
    """Refuse (NotOurs) to replace `path` unless it is absent, an empty folder, a folder dia_tpu marked as `kind`
    or one `earlier` recognises as written before marks; a symbolic link is refused too (replacing works by
    renames, which would move the link, not what it points at)."""
    if path.is_symlink():
        raise NotOurs(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}): dia_tpu replaces it by renaming "
            "folders and neither follows nor removes links; remove the link (what it points at is not "
            "touched) or choose another folder"
        )
    if not path.exists() or kind_of(path) == kind or (path.is_dir() and not any(path.iterdir())):
        return
    if not (path.is_dir() and earlier is not None and earlier(path)):
        raise NotOurs(
            f"{what} {path} exists and is not a dia_tpu {kind} ({listing(path)}); dia_tpu replaces only "
            "what it wrote: move it away or choose another folder"
        )


def listing(folder: Path, most: int = 4) -> str:
    """A few of a folder's entries, for messages: `a.txt, sub/, ... (7 entries)`."""
    if not folder.is_dir():
        return "a file"
    entries = sorted(folder.iterdir())
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:most]]
    more = f", ... ({len(entries)} entries)" if len(entries) > most else ""
    return (", ".join(names) + more) if names else "empty"


def aside(path: Path, why: str) -> Path:
    """The hidden name beside `path` where it is built (`why` "building") or set aside while it is replaced
    ("replaced"): `.NAME.why`, free when this returns. One left there by a killed process is dia_tpu's if it
    carries a mark (every folder dia_tpu builds or sets aside does) and is removed; anything else is refused."""
    spot = path.with_name(f".{path.name}.{why}")
    if spot.is_symlink() or (spot.exists() and not _marked(spot)):
        raise NotOurs(f"{spot} is in the way of writing {path} and dia_tpu did not write it: move it away")
    if spot.exists():
        shutil.rmtree(spot)
    return spot


def _marked(folder: Path) -> bool:
    """Whether `folder` carries a mark of dia_tpu's: this module's, or a checkpoint's completion mark (written
    last into every checkpoint, `dia_tpu.artifacts.COMPLETE_FILE`)."""
    return folder.is_dir() and (kind_of(folder) is not None or (folder / "checkpoint.json").is_file())


def remove(path: Path, kind: str) -> None:
    """Delete `path` when it is a folder dia_tpu marked as `kind`; refuse otherwise."""
    check_replaceable(path, kind, "removing")
    shutil.rmtree(path)
