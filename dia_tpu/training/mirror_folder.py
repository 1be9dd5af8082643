"""The mirror's folder on another filesystem (fsspec): claimed as dia_tpu's, its checkpoints listed with their
completion marks, a staged folder uploaded whole (the mark last), old checkpoints rotated. `Mirror`
(`dia_tpu.training.mirror`) runs a run's uploads and fetches through it."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dia_tpu.artifacts import COMPLETE_FILE, STEP_DIR, file_sizes, mark_text, valid_mark
from dia_tpu.artifacts.owner import MARK_FILE, MIRROR
from dia_tpu.config.secrets import redact_url, scrub
from dia_tpu.console import first_line
from dia_tpu.errors import UserError

# The package each remote scheme needs (fsspec's own error says it too, less plainly).
BACKENDS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "hf": "huggingface_hub"}
CHECKPOINTS = "checkpoints"


class MirrorError(UserError):
    """`output.mirror` cannot be used."""


class MirrorFolder:
    """The folder at `url`, as the filesystem fsspec picks for it reaches it."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        # What lines and errors name: the URL's credentials stay in this process, used only by the filesystem.
        self.shown = redact_url(url)
        scheme = url.split("://", 1)[0] if "://" in url else ""
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as err:
            raise MirrorError(
                f"output.mirror {self.shown}: {self._why(err)} (pip install {BACKENDS.get(scheme, scheme)})"
            ) from err
        except ValueError as err:
            raise MirrorError(f"output.mirror {self.shown}: {self._why(err)}") from err
        self.root = self.root.rstrip("/")

    def check_writable(self) -> None:
        """Write and delete a small file, so that a mirror that cannot be written fails before any work."""
        probe = self._path(f".probe-{socket.gethostname()}-{os.getpid()}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"dia_tpu")
            self.fs.rm_file(probe)
        except Exception as err:  # each backend raises its own types (gcsfs's HttpError is not an OSError)
            raise MirrorError(f"output.mirror {self.shown} cannot be written ({self._why(err)})") from err

    def claim(self) -> None:
        """Make the mirror's root dia_tpu's before anything is uploaded or rotated there: an empty root is marked
        as a mirror, a marked one accepted, one of an older dia_tpu (checkpoints, best/, final/ alone, each a whole
        copy) marked; anything else refused, since uploads replace and rotation deletes what is there."""
        marker = self._path(MARK_FILE)
        with self._talking("read what it holds"):
            if self.fs.exists(marker):
                try:
                    kind = json.loads(self.fs.cat_file(marker)).get("kind")
                except (ValueError, AttributeError):
                    kind = None
                if kind == MIRROR:
                    return
                raise MirrorError(
                    f"output.mirror {self.shown} is a dia_tpu {kind or 'unknown'} folder, not a "
                    "mirror; give another location"
                )
            names = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.root, detail=False))
            names = [name for name in names if not name.startswith(".probe-")]
            if names and not self._earlier_mirror(names):
                listed = ", ".join(names[:4]) + (f", ... ({len(names)} entries)" if len(names) > 4 else "")
                raise MirrorError(
                    f"output.mirror {self.shown} holds files that are not a dia_tpu mirror ({listed}); "
                    "uploads would replace and rotation delete them: give an empty or new "
                    "location"
                )
            self.fs.pipe_file(marker, json.dumps({"kind": MIRROR}).encode() + b"\n")

    def _earlier_mirror(self, names: list[str]) -> bool:
        """A mirror written before mirrors were marked: checkpoints/, best/, final/ alone, checkpoints/ holding
        step_N (and forked-*) folders alone, and at least one whole copy (an upload cut off leaves a copy that
        is not whole; someone else's folders of those names have no completion marks at all)."""
        if not set(names) <= {CHECKPOINTS, "best", "final"}:
            return False
        listed = self.fs.ls(self._path(CHECKPOINTS), detail=False) if CHECKPOINTS in names else []
        inside = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in listed]
        if not all(STEP_DIR.match(name) or name.startswith("forked-") for name in inside):
            return False
        folders = [f"{CHECKPOINTS}/{name}" for name in inside if STEP_DIR.match(name)]
        folders += [name for name in ("best", "final") if name in names]
        return any(self.mark(name) is not None for name in folders)

    # What is there.

    def checkpoints(self) -> list[tuple[int, str, bool]]:
        """(step, name, complete) of every step_N folder on the mirror, oldest first."""
        self.fs.invalidate_cache(self._path(CHECKPOINTS))  # listings may be cached; uploads change them
        try:
            entries = self.fs.ls(self._path(CHECKPOINTS), detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            folder = entry.rstrip("/").rsplit("/", 1)[-1]
            if match := STEP_DIR.match(folder):
                name = f"{CHECKPOINTS}/{folder}"
                found.append((int(match[1]), name, self.mark(name) is not None))
        return sorted(found)

    def complete_checkpoints(self) -> list[tuple[int, str]]:
        return [(step, name) for step, name, complete in self.checkpoints() if complete]

    def mark(self, name: str) -> dict | None:
        """The completion mark of folder `name` on the mirror, when the copy is whole (as `completion_mark`)."""
        folder = self._path(name)
        try:
            text = self.fs.cat_file(f"{folder}/{COMPLETE_FILE}")
            sizes = {path[len(folder) + 1 :]: info["size"] for path, info in self.fs.find(folder, detail=True).items()}
        except FileNotFoundError:
            return None
        return valid_mark(text, lambda file: sizes.get(file))

    # Writing.

    def upload(self, staged: Path, name: str, step: int) -> dict[str, int]:
        """Put the folder `staged` at `name` as a whole copy of step `step`: an old copy there loses its mark
        first, the new one gets its mark last. Returns the files' sizes."""
        target = self._path(name)
        if self.fs.exists(target):
            if self.fs.exists(f"{target}/{COMPLETE_FILE}"):
                self.fs.rm_file(f"{target}/{COMPLETE_FILE}")  # first: the old copy is no longer whole
            self.fs.rm(target, recursive=True)
        sizes = file_sizes(staged)
        for file in sizes:
            remote = f"{target}/{file}"
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(staged / file), remote)
        self.fs.pipe_file(f"{target}/{COMPLETE_FILE}", mark_text(step, sizes).encode())
        return sizes

    def rotate(self, keep_last: int) -> None:
        """Keep the newest `keep_last` complete checkpoints, and incomplete ones newer than the newest complete."""
        found = self.checkpoints()
        complete = [name for _, name, whole in found if whole]
        newest = max((step for step, _, whole in found if whole), default=-1)
        keep = set(complete[-keep_last:])
        for step, name, _ in found:
            if name not in keep and step < newest:
                self.fs.rm(self._path(name), recursive=True)

    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """A backend's failure before training as one error naming the mirror and what was being done."""
        try:
            yield
        except MirrorError:
            raise
        except Exception as err:  # each backend raises its own types (gcsfs's HttpError is not an OSError)
            raise MirrorError(f"output.mirror {self.shown}: could not {what} ({self._why(err)})") from err

    def _why(self, err: BaseException) -> str:
        """A backend's error in one line without the URL's credentials: it may name a path that holds them."""
        return scrub(first_line(err), self.url)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"
