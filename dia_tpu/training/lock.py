"""One run per run folder: the main process holds `output.dir/.lock` (its pid, host and start time) from the
start of training to its end. A second run in the same folder fails at once naming the holder; a lock left by
a process that is gone (same host, pid no longer alive) is taken over."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class RunInUse(ValueError):
    """Another run holds the run folder."""


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self.held = False
        self.made_folder = False  # the run folder did not exist: a run that leaves nothing in it removes it

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        folder = self.path.parent
        try:
            self.made_folder = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"output.dir {folder} cannot be created ({err.strerror or err})") from err
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is not None and not _gone(holder):
                    raise RunInUse(f"output.dir {folder} is in use by another run (pid {holder['pid']} on "
                                   f"{holder['host']}, since {holder['started']}); wait for it to end, or use "
                                   f"another output.dir. If that process is gone, delete {self.path}") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone, or unreadable
                continue
            except OSError as err:
                raise ValueError(f"output.dir {folder} is not writable ({err.strerror or err})") from err
            with os.fdopen(handle, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise RunInUse(f"output.dir {folder}: could not take {self.path}: another run keeps taking it")

    def release(self) -> None:
        if self.held and (_read(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            if self.made_folder and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
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
