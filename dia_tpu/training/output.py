"""The run folder before training: it must be dia_tpu's (marked as a run, new, empty, or a run written before
marks existed), the folders training replaces (`best/`, `final/`, `checkpoints/step_N`) must be its own and no
links, and an earlier run in it is continued (`--resume auto`), started over on request (`--overwrite`), or
refused with those two ways out. Nothing here runs on a folder that is not proven a run."""

from __future__ import annotations

import shutil
from pathlib import Path

from dia_tpu.artifacts import CONFIG_FILE, STEP_DIR, RunFolder, is_complete
from dia_tpu.artifacts.lock import LOCK_FILE
from dia_tpu.artifacts.owner import EXPORT, MARK_FILE, RUN, NotOurs, kind_of, listing, mark
from dia_tpu.artifacts.weights import weights_file
from dia_tpu.config import ConfigError, TrainConfig, read_saved
from dia_tpu.data.shards import earlier_dataset
from dia_tpu.errors import UserError
from dia_tpu.training.resume import CHANGES_FILE, Resume

# What a run folder holds: a folder that is not marked as a run counts as one only if it holds these alone.
RUN_ENTRIES = {
    CONFIG_FILE,
    "checkpoints",
    "best",
    "final",
    "logs",
    "samples",
    "evaluations",
    LOCK_FILE,
    ".mirror",
    CHANGES_FILE,
    "report.html",
    MARK_FILE,
}


def earlier_run(folder: Path) -> bool:
    """A folder training may take as its run although it is not marked as one: one holding only dia_tpu's own
    folders (a dataset prepared into it, as the demo's config does), or a run written before runs were marked
    (a run's entries alone, with a config.yaml dia_tpu reads)."""
    names = {p.name for p in folder.iterdir() if not _dia_tpus(p)}
    if not names:
        return True
    if CONFIG_FILE not in names or not names <= RUN_ENTRIES:
        return False
    try:
        read_saved(folder / CONFIG_FILE)
    except ConfigError:
        return False
    return True


def _dia_tpus(path: Path) -> bool:
    """A folder dia_tpu wrote as a whole other than a run (a prepared dataset), marked or from before marks."""
    return path.is_dir() and not path.is_symlink() and (kind_of(path) not in (None, RUN) or earlier_dataset(path))


def _earlier_export(folder: Path) -> bool:
    """An export written before exports were marked: a model (config.json and weights) with its run's config."""
    return (folder / "config.json").is_file() and (folder / CONFIG_FILE).is_file() and weights_file(folder) is not None


def check_output(run: RunFolder, t: TrainConfig, resume: Resume) -> None:
    """Refuse, on every process before any work, an output.dir training may not write (see the module's
    docstring); NotOurs or ValueError name the folder and the way out."""
    root = run.root
    if root.exists():
        if not root.is_dir():
            raise NotOurs(f"output.dir {root} is a file, not a folder")
        found = kind_of(root)
        if found not in (None, RUN):
            raise NotOurs(f"output.dir {root} is a dia_tpu {found} folder, not a run's; give another output.dir")
        if found is None and any(root.iterdir()) and not earlier_run(root):
            raise NotOurs(
                f"output.dir {root} holds files that are not a dia_tpu run ({listing(root)}); training "
                "writes only into a new or empty folder or a run's: give another output.dir"
            )
    steps = [p for p in run.checkpoints.iterdir() if STEP_DIR.match(p.name)] if run.checkpoints.is_dir() else []
    for path in (run.best, run.final, *steps):
        if path.is_symlink():
            raise NotOurs(
                f"{path} is a symbolic link: training replaces it by renaming folders and neither follows "
                "nor removes links; remove the link (what it points at is not touched), or give "
                "output.dir on the disk it points to"
            )
    if run.best.exists() and not is_complete(run.best):
        raise NotOurs(
            f"{run.best} is not a complete dia_tpu checkpoint ({listing(run.best)}); training would "
            "replace it: move it away"
        )
    if run.final.exists() and kind_of(run.final) != EXPORT and not _earlier_export(run.final):
        raise NotOurs(
            f"{run.final} is not a dia_tpu export ({listing(run.final)}); training would replace it: move it away"
        )
    earlier = [p.name for p in run.list_checkpoints()] + [f"{p.name}/" for p in (run.best, run.final) if p.exists()]
    continues = t.resume == "auto" or (resume.checkpoint is not None and _belongs(resume.checkpoint, run))
    if earlier and not continues and not t.overwrite:
        how = (
            "continue it with --resume auto (train.resume=auto), or start over with --overwrite "
            "(train.overwrite=true), which deletes them first"
        )
        if t.resume is not None:
            how = f"train.resume={t.resume} would start a second history in it: give a new output.dir, or {how}"
        raise UserError(f"output.dir {root} already holds a run ({', '.join(earlier)}): {how}")


def _belongs(checkpoint: Path, run: RunFolder) -> bool:
    place = checkpoint.resolve().parent
    return place == run.checkpoints.resolve() or checkpoint.resolve() == run.best.resolve()


def start(run: RunFolder, t: TrainConfig) -> list[str]:
    """On the main process, holding the run's lock: with train.overwrite delete the earlier run's outputs; mark
    an export written before marks as the run's. Returns what was done, as lines to print."""
    lines = []
    if t.overwrite:
        gone = [p for p in (run.checkpoints, run.best, run.final, run.logs, run.samples, run.evaluations) if p.exists()]
        for path in gone:
            shutil.rmtree(path)
        for file in (run.root / CHANGES_FILE, run.root / "report.html"):
            file.unlink(missing_ok=True)
        if gone:
            lines.append(
                f"train.overwrite: deleted the earlier run's {', '.join(p.name + '/' for p in gone)} in {run.root}"
            )
    if run.final.is_dir() and kind_of(run.final) is None:
        mark(run.final, EXPORT)
    return lines
