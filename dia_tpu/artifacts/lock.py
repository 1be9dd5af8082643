"""One writer per folder: a command that writes a folder (training its `output.dir`, prepare its work folder)
claims it as dia_tpu's (`dia_tpu.artifacts.owner.claim`) and holds `.lock` in it (pid, host and start time) from
start to end. A second writer fails at once naming the holder; a lock left by a process that is gone (same
host, pid no longer alive) is taken over."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from dia_tpu.artifacts.owner import MARK_FILE, claim
from dia_tpu.errors import UserError

LOCK_FILE = ".lock"


class InUse(UserError):
    """Another process holds the folder."""


class FolderLock:
    """`with FolderLock(folder, kind, what, user)`: claim `folder` as dia_tpu's `kind` of folder and hold its lock.
    `what` names the folder in messages ("output.dir"), `user` the kind of writer ("run")."""

    def __init__(self, folder: Path, kind: str, what: str, user: str, earlier: Callable[[Path], bool] | None = None):
        self.folder, self.kind, self.what, self.user, self.earlier = Path(folder), kind, what, user, earlier
        self.path = self.folder / LOCK_FILE
        self.held = False
        self.made_folder = False  # the folder did not exist: a writer that leaves nothing in it removes it

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.made_folder = claim(self.folder, self.kind, self.what, self.earlier)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is not None and not _gone(holder):
                    raise InUse(
                        f"{self.what} {self.folder} is in use by another {self.user} (pid {holder['pid']} on "
                        f"{holder['host']}, since {holder['started']}); wait for it to end, or use another "
                        f"folder. If that process is gone, delete {self.path}"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone, or unreadable
                continue
            except OSError as err:
                raise UserError(f"{self.what} {self.folder} is not writable ({err.strerror or err})") from err
            with os.fdopen(handle, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise InUse(f"{self.what} {self.folder}: could not take {self.path}: another {self.user} keeps taking it")

    def release(self, remove: bool = False) -> None:
        """Give the lock up; with `remove`, delete the folder (a work folder whose work is done) first, holding
        the lock while its contents go. A folder this lock created and nothing was written to goes too."""
        if self.held and (_read(self.path) or {}).get("pid") == os.getpid():
            if remove:
                for entry in self.folder.iterdir():
                    if entry.name not in (LOCK_FILE, MARK_FILE):
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            self.path.unlink(missing_ok=True)
            if (remove or self.made_folder) and {p.name for p in self.folder.iterdir()} <= {MARK_FILE}:
                (self.folder / MARK_FILE).unlink(missing_ok=True)
                self.folder.rmdir()
        self.held = False


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if {"pid", "host", "started"} <= set(holder) else None
    except (OSError, ValueError, TypeError):
        return None


def _gone(holder: dict) -> bool:
    """Whether the lock's process no longer runs; a lock from another host is taken as live."""
    if holder["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
