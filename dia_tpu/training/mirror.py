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

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dia_tpu.artifacts import (
    COMPLETE_FILE,
    RunFolder,
    completion_mark,
    file_sizes,
    mark_text,
    put_in_place,
)
from dia_tpu.artifacts.names import inside
from dia_tpu.training.mirror_folder import CHECKPOINTS, MirrorError, MirrorFolder

__all__ = ["Mirror", "MirrorError"]


@dataclass
class _Upload:
    staged: Path  # the hard-linked copy uploaded from
    name: str  # where under the mirror: checkpoints/step_N, best, final
    step: int


class Mirror(MirrorFolder):
    """The run's mirror (a context manager: leaving it waits for the uploads in flight)."""

    def __init__(self, url: str, run: RunFolder, keep_last: int, report: Callable[[str], None] = print):
        super().__init__(url)
        self.run, self.keep_last, self.report = run, keep_last, report
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
                sizes = self.upload(job.staged, job.name, job.step)
                if job.name.startswith(f"{CHECKPOINTS}/"):
                    self.rotate(self.keep_last)
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

    def _name(self, folder: Path) -> str:
        return folder.relative_to(self.run.root).as_posix()


def _size(files: dict[str, int]) -> str:
    return f"{sum(files.values()) / 2**20:.1f} MB"
