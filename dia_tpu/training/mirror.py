"""Copies of a run on another filesystem, for machines that vanish with their disk: `output.mirror`.

The mirror is any folder fsspec reaches: a local path (another disk, NFS), `gs://bucket/run` (gcsfs),
`s3://bucket/run` (s3fs), `hf://buckets/<user>/<bucket>/run` (huggingface_hub), `memory://run` (one process).
It holds what the run folder holds: `checkpoints/step_N/`, `best/`, `final/`.

- **Uploads never stall training.** Each complete checkpoint, each new `best/` and the export are hard-linked
  into `output.dir/.mirror/` (no copy: their files never change once written, and the links keep them while
  rotation or a new `best/` removes the originals) and uploaded from there by one background thread. When
  saves come faster than uploads, a checkpoint that `train.keep_last` newer ones supersede is skipped.
- **A copy is whole or ignored.** Object stores have no rename, so the completion mark (`checkpoint.json`, the
  one local checkpoints carry) is uploaded last, and deleted first before a folder is replaced. A folder on
  the mirror whose mark is missing or lists a file of another size is never fetched.
- **Rotation applies.** After each checkpoint upload the mirror keeps the newest `train.keep_last` complete
  checkpoints and drops incomplete copies older than the newest complete one.
- **A fresh machine resumes from it.** With `--resume auto`, when the mirror's newest complete checkpoint is
  newer than the run folder's (an empty `output.dir` has none), it is downloaded into the run folder first.
- **Forks apply.** Resuming from an older checkpoint of the run is refused when the mirror has newer ones too,
  and `--fork` moves them aside there (`checkpoints/forked-<time>/`), as it does locally.

Only the main process talks to the mirror, and only the filesystem sees its URL's credentials: every line and error
names it redacted (`s3://***@bucket/run`, see `dia_tpu.config.secrets`). A failed upload is a warning: the run goes
on and its local copy is whole; the next checkpoint is uploaded as usual.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dia_tpu.artifacts import (
    COMPLETE_FILE,
    STEP_DIR,
    RunFolder,
    completion_mark,
    file_sizes,
    mark_text,
    put_in_place,
    valid_mark,
)
from dia_tpu.artifacts.names import inside
from dia_tpu.artifacts.owner import MARK_FILE, MIRROR
from dia_tpu.config.secrets import redact_url, scrub
from dia_tpu.console import first_line
from dia_tpu.errors import UserError

# The package each remote scheme needs (fsspec's own error says it too, less plainly).
BACKENDS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "hf": "huggingface_hub"}
CHECKPOINTS = "checkpoints"


class MirrorError(UserError):
    """`output.mirror` cannot be used."""


@dataclass
class _Upload:
    staged: Path  # the hard-linked copy uploaded from
    name: str  # where under the mirror: checkpoints/step_N, best, final
    step: int


class Mirror:
    """The run's mirror (a context manager: leaving it waits for the uploads in flight)."""

    def __init__(self, url: str, run: RunFolder, keep_last: int, report: Callable[[str], None] = print):
        import fsspec

        self.url, self.run, self.keep_last, self.report = url, run, keep_last, report
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
        self.failed: list[str] = []
        self._queue: list[_Upload] = []
        self._busy = False
        self._closing = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Mirror:
        self.check_writable()
        self.claim()
        shutil.rmtree(self.run.staging, ignore_errors=True)  # a killed run's pending uploads are redone by `start`
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="dia_tpu-mirror", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    # What is on the mirror.

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

    # Before training.

    def check_fork(self, checkpoint: Path | None, fork: bool) -> None:
        """Refuse to resume from a checkpoint of this run when the mirror holds newer ones, unless `fork`."""
        with self._talking("list its checkpoints"):
            newer = self._newer_than(checkpoint)
        if newer and not fork:
            raise MirrorError(
                f"train.resume: the mirror {self.shown} holds checkpoints newer than {checkpoint} "
                f"({', '.join(newer)}): going on from it would write over them. Use --resume auto to "
                "continue the run, or add --fork to branch from it (the mirror's newer checkpoints "
                "are then moved to checkpoints/forked-<time>/ there)"
            )

    def start(self, resume_setting: str | None, checkpoint: Path | None) -> Path | None:
        """Bring the mirror and the run folder in line before training (after `check_fork` and the local
        set-aside): fetch a newer checkpoint for `--resume auto`; move aside the mirror's checkpoints newer than
        a fork point; queue what the run folder has complete and the mirror lacks (a killed run's last uploads).
        Returns the checkpoint fetched, which the run then starts from, or None."""
        fetched = None
        if resume_setting == "auto":
            with self._talking("fetch its newest checkpoint"):
                fetched = self.fetch_newest()
        with self._talking("move the checkpoints newer than the fork point aside"):
            newer = [] if resume_setting == "auto" else self._newer_than(checkpoint)
            aside = f"{CHECKPOINTS}/forked-{time.strftime('%Y%m%d-%H%M%S')}"
            for name in newer:
                target = f"{aside}/{name.rsplit('/', 1)[-1]}"
                self.fs.mv(self._path(name), self._path(target), recursive=True)
                self.report(f"mirror: moved {name}, newer than the fork point, to {target} on {self.shown}")
        with self._talking("list its checkpoints"):
            for folder in [*self.run.complete_checkpoints()[-self.keep_last :], self.run.best]:
                mark = completion_mark(folder)
                on_mirror = self.mark(self._name(folder)) if mark is not None else None
                if mark is not None and (on_mirror is None or on_mirror["step"] != mark["step"]):
                    self.send(folder, mark["step"])
        return fetched

    def fetch_newest(self) -> Path | None:
        """Download the mirror's newest complete checkpoint when the run folder has none as new; returns it."""
        remote = self.complete_checkpoints()
        local = self.run.complete_checkpoints()
        local_step = completion_mark(local[-1])["step"] if local else -1
        if not remote or remote[-1][0] <= local_step:
            return None
        step, name = remote[-1]
        path = self.run.checkpoint(step)
        building = path.with_name(path.name + ".fetch")
        shutil.rmtree(building, ignore_errors=True)
        started, mark = time.monotonic(), self.mark(name)
        for file in mark["files"]:
            local = inside(building, file, f"output.mirror {self.shown}: {name}/{COMPLETE_FILE} lists")
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self._path(f"{name}/{file}"), str(local))
        (building / COMPLETE_FILE).write_text(mark_text(step, mark["files"]))
        if completion_mark(building) is None:
            raise MirrorError(f"output.mirror {self.shown}: {name} changed while it was downloaded; run again")
        put_in_place(building, path)
        took = time.monotonic() - started
        self.report(f"mirror: fetched {name} from {self.shown} ({_size(mark['files'])} in {took:.1f} s)")
        return path

    def _newer_than(self, checkpoint: Path | None) -> list[str]:
        """The mirror's complete checkpoints (and best/) saved after `checkpoint`, when it is one of the run's."""
        if checkpoint is None or checkpoint.resolve().parent != self.run.checkpoints.resolve():
            return []
        step = completion_mark(checkpoint)["step"]
        newer = [name for s, name in self.complete_checkpoints() if s > step]
        best = self.mark("best")
        return newer + ["best"] if best is not None and best["step"] > step else newer

    # Uploads.

    def send(self, folder: Path, step: int) -> None:
        """Queue a finished folder of the run (a checkpoint, best/ or final/) for upload; returns at once."""
        name = self._name(folder)
        staged = self.run.staging / f"{name.replace('/', '-')}-{time.monotonic_ns()}"
        for file in file_sizes(folder):  # the upload writes the mark itself, last
            (staged / file).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(folder / file, staged / file)
            except OSError:  # a filesystem without hard links
                shutil.copy2(folder / file, staged / file)
        with self._wake:
            self._queue.append(_Upload(staged, name, step))
            self._wake.notify()

    def close(self) -> None:
        """Wait for the queued uploads, saying so, then stop the upload thread."""
        if self._thread is None:
            return
        with self._wake:
            pending = len(self._queue) + self._busy
            self._closing = True
            self._wake.notify()
        if pending:
            self.report(f"mirror: waiting for {pending} upload(s) to {self.shown}")
        self._thread.join()
        self._thread = None
        shutil.rmtree(self.run.staging, ignore_errors=True)
        if self.failed:
            self.report(
                f"mirror: {len(self.failed)} upload(s) to {self.shown} failed ({', '.join(self.failed)}); "
                f"the run folder {self.run.root} has them"
            )

    def _next(self) -> _Upload | None:
        """The next upload to do (None: closing and nothing left), skipping superseded ones."""
        with self._wake:
            self._busy = False
            while not self._queue and not self._closing:
                self._wake.wait()
            while self._queue:
                job = self._queue.pop(0)
                later = [j for j in self._queue if j.name.startswith(f"{CHECKPOINTS}/")]
                superseded = (
                    len(later) >= self.keep_last
                    if job.name.startswith(f"{CHECKPOINTS}/")
                    else any(j.name == job.name for j in self._queue)
                )
                if not superseded:
                    self._busy = True
                    return job
                shutil.rmtree(job.staged, ignore_errors=True)
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            started = time.monotonic()
            try:
                sizes = self._upload(job)
                if job.name.startswith(f"{CHECKPOINTS}/"):
                    self._rotate()
                self.report(
                    f"mirror: {job.name} (step {job.step}) is on {self.shown} ({_size(sizes)} in "
                    f"{time.monotonic() - started:.1f} s)"
                )
            except Exception as err:  # any backend's failure; the local copy is whole and training goes on
                self.failed.append(job.name)
                self.report(
                    f"mirror: warning: could not upload {job.name} to {self.shown} ({self._why(err)}); "
                    "the run goes on and the local copy is whole"
                )
            finally:
                shutil.rmtree(job.staged, ignore_errors=True)

    def _upload(self, job: _Upload) -> dict[str, int]:
        target = self._path(job.name)
        if self.fs.exists(target):
            if self.fs.exists(f"{target}/{COMPLETE_FILE}"):
                self.fs.rm_file(f"{target}/{COMPLETE_FILE}")  # first: the old copy is no longer whole
            self.fs.rm(target, recursive=True)
        sizes = file_sizes(job.staged)
        for file in sizes:
            remote = f"{target}/{file}"
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(job.staged / file), remote)
        self.fs.pipe_file(f"{target}/{COMPLETE_FILE}", mark_text(job.step, sizes).encode())
        return sizes

    def _rotate(self) -> None:
        found = self.checkpoints()
        complete = [name for _, name, whole in found if whole]
        newest = max((step for step, _, whole in found if whole), default=-1)
        keep = set(complete[-self.keep_last :])
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

    def _name(self, folder: Path) -> str:
        return folder.relative_to(self.run.root).as_posix()


def _size(files: dict[str, int]) -> str:
    return f"{sum(files.values()) / 2**20:.1f} MB"
