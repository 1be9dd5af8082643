"""dia_tpu deletes or replaces only what it can prove it wrote: an export, a run, a dataset or a mirror on a folder
that is not its own is refused in one line before any work, with everything in the folder as it was; a run
already in an output.dir is continued or started over only when asked; one prepare writes an output at a time,
and what a failed prepare leaves never blocks the next."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, prepare_config, reset_accelerate, scalars, tiny

from dia_tpu.artifacts.lock import FolderLock, InUse
from dia_tpu.artifacts.owner import MARK_FILE, PREPARE_WORK, RUN, NotOurs, kind_of
from dia_tpu.data.prepare import prepare
from dia_tpu.data.shards import PrepareError
from dia_tpu.export import export_checkpoint
from dia_tpu.training.mirror import MirrorError
from dia_tpu.training.recipe import train

SAMPLE = ROOT / "data" / "sample"
STEPS = ["train.max_steps=2", "train.save_every=1", "data.eval_size=2", "eval.eval_every=1"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (links not followed) with its size and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        found[path.relative_to(folder).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


def users_folder(root: Path, *names: str) -> Path:
    """A folder of someone's own files, some named as a run's parts are."""
    root.mkdir(parents=True)
    (root / "thesis.txt").write_text("years of work\n")
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text(f"{name}: mine\n")
    return root


@pytest.fixture(scope="module")
def run(codes_dir, tmp_path_factory) -> Path:
    """A finished tiny run: checkpoints step_1 and step_2, best/, final/, logs."""
    folder = tmp_path_factory.mktemp("owned") / "run"
    train(tiny(codes_dir, folder, *STEPS))
    reset_accelerate()
    return folder


def test_export_writes_only_into_a_new_empty_or_export_folder(run, tmp_path):
    checkpoint = run / "checkpoints" / "step_2"
    mine = users_folder(tmp_path / "mine", "sub")
    before, run_before = snapshot(mine), snapshot(run)
    with pytest.raises(NotOurs, match=r"--out .*/mine exists and is not a dia_tpu export \(sub/, thesis\.txt\)"):
        export_checkpoint(checkpoint, mine)
    with pytest.raises(NotOurs, match=r"--out .*/run holds the checkpoint .*/step_2 it exports"):
        export_checkpoint(checkpoint, run)  # the run folder itself
    with pytest.raises(NotOurs, match=r"--out .*step_2 is the checkpoint .*step_2 it exports"):
        export_checkpoint(checkpoint, checkpoint)
    with pytest.raises(NotOurs, match=r"--out .*/checkpoints holds the checkpoint"):
        export_checkpoint(checkpoint, run / "checkpoints")
    with pytest.raises(NotOurs, match=r"--out .*/inside lies inside the checkpoint"):
        export_checkpoint(checkpoint, checkpoint / "inside")
    assert snapshot(mine) == before and snapshot(run) == run_before

    out = export_checkpoint(checkpoint, tmp_path / "export")
    assert kind_of(out) == "export"
    (tmp_path / "empty").mkdir()
    export_checkpoint(checkpoint, tmp_path / "empty")  # an empty folder has nothing to lose
    export_checkpoint(run / "checkpoints" / "step_1", out)  # an export is replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "export", "mine"]  # nothing left beside
    # What a killed export leaves beside its folder is cleared when it carries dia_tpu's mark, refused otherwise.
    (tmp_path / ".export.building").mkdir()
    (tmp_path / ".export.building" / MARK_FILE).write_text('{"kind": "export"}')
    export_checkpoint(checkpoint, out)
    assert not (tmp_path / ".export.building").exists()
    (tmp_path / ".export.replaced").mkdir()
    (tmp_path / ".export.replaced" / "notes.txt").write_text("mine")
    with pytest.raises(
        NotOurs,
        match=r"\.export\.replaced is in the way of writing .*/export and dia_tpu did not "
        "write it",
    ):
        export_checkpoint(checkpoint, out)
    assert (tmp_path / ".export.replaced" / "notes.txt").read_text() == "mine"


def test_the_export_command_refuses_in_one_line(run, tmp_path):
    mine = users_folder(tmp_path / "mine", "sub")
    before = snapshot(mine)
    done = subprocess.run(
        [sys.executable, "-m", "dia_tpu", "export", "--checkpoint", str(run / "best"), "--out", str(mine)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"dia-tpu export: error: --out {mine} exists and is not a dia_tpu export (sub/, thesis.txt); dia_tpu "
        "replaces only what it wrote: move it away or choose another folder"
    ]
    assert snapshot(mine) == before


def test_a_run_in_output_dir_is_continued_or_started_over_only_when_asked(run, codes_dir, tmp_path):
    again = tmp_path / "run"
    shutil.copytree(run, again, symlinks=True)
    before = snapshot(again)
    with pytest.raises(
        ValueError,
        match=r"already holds a run \(step_1, step_2, best/, final/\): continue it with "
        r"--resume auto .* or start over with --overwrite",
    ):
        train(tiny(codes_dir, again, *STEPS))
    reset_accelerate()
    with pytest.raises(ValueError, match=r"train.resume=.*/step_1 would start a second history in it"):
        train(tiny(codes_dir, again, *STEPS, f"train.resume={run / 'checkpoints' / 'step_1'}"))
    reset_accelerate()
    assert snapshot(again) == before

    train(tiny(codes_dir, again, "train.max_steps=1", "data.eval_size=0", "train.overwrite=true"))
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == ["step_1"]
    assert not (again / "best").exists() and kind_of(again / "final") == "export"
    assert [step for step, _ in scalars(again)["train/loss"]] == [1]  # the earlier run's curves went with it


def test_a_folder_of_someone_elses_is_never_a_run_a_dataset_or_a_mirror(codes_dir, tmp_path):
    mine = users_folder(tmp_path / "mine", "best", "final", "checkpoints/step_1")
    before = snapshot(mine)
    with pytest.raises(
        NotOurs,
        match=r"output.dir .*/mine holds files that are not a dia_tpu run \(best/, "
        r"checkpoints/, final/, thesis\.txt\)",
    ):
        train(tiny(codes_dir, mine, *STEPS))
    reset_accelerate()
    (mine / "thesis.txt").unlink()  # the run's names alone, with no run's config: still not a run
    before = snapshot(mine)
    with pytest.raises(NotOurs, match="holds files that are not a dia_tpu run"):
        train(tiny(codes_dir, mine, *STEPS))
    reset_accelerate()
    with pytest.raises(
        MirrorError,
        match=r"output.mirror .*/mine holds files that are not a dia_tpu mirror "
        r"\(best, checkpoints, final\)",
    ):
        train(tiny(codes_dir, tmp_path / "run", *STEPS, f"output.mirror={mine}"))
    reset_accelerate()
    assert snapshot(mine) == before and not (tmp_path / "run").exists()

    web = tmp_path / "site"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my web app"}\n')
    (web / "index.html").write_text("<html></html>\n")
    before = snapshot(web)
    with pytest.raises(
        NotOurs,
        match=r"--output .*/site exists and is not a dia_tpu dataset \(index.html, "
        r"manifest.json\)",
    ):
        prepare(prepare_config(), SAMPLE, web)
    assert snapshot(web) == before and not (tmp_path / "site.work").exists()


def test_a_linked_best_is_refused_before_any_work(run, codes_dir, tmp_path):
    again = tmp_path / "run"
    shutil.copytree(run, again, symlinks=True)
    elsewhere = tmp_path / "elsewhere"
    (again / "best").rename(elsewhere)
    (again / "best").symlink_to(elsewhere)
    before, target = snapshot(again), snapshot(elsewhere)
    with pytest.raises(NotOurs, match=r"/best is a symbolic link: training replaces it by renaming folders"):
        train(tiny(codes_dir, again, *STEPS, "train.resume=auto", "train.max_steps=3"))
    assert snapshot(again) == before and snapshot(elsewhere) == target


def test_a_run_from_before_marks_resumes_and_is_marked(run, codes_dir, tmp_path):
    again = tmp_path / "run"
    shutil.copytree(run, again, symlinks=True)
    (again / MARK_FILE).unlink()
    (again / "final" / MARK_FILE).unlink()
    train(tiny(codes_dir, again, *STEPS, "train.resume=auto", "train.max_steps=3", "train.resume_changes=allow"))
    assert kind_of(again) == RUN and kind_of(again / "final") == "export"
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == ["step_2", "step_3"]


def test_one_prepare_per_output_and_leftovers_never_block_the_next(tmp_path, monkeypatch):
    cfg, out = prepare_config(), tmp_path / "codes"
    work = tmp_path / "codes.work"
    holder = FolderLock(work, PREPARE_WORK, "prepare's work folder", "prepare")
    with (
        holder,
        pytest.raises(
            InUse,
            match=r"prepare's work folder .*codes\.work is in use by another prepare "
            rf"\(pid {os.getpid()} on ",
        ),
    ):
        prepare(cfg, SAMPLE, out)
    assert not out.exists()

    # A shard cut off by a full disk: the write fails in one line, the shards before it are kept, and what the
    # failed write left (a .tmp folder) is no obstacle to the next run.
    from datasets import Dataset

    real_save = Dataset.save_to_disk

    def disk_full_on_second(self, path, **kwargs):
        if path.endswith("shard_00001.tmp"):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, path, **kwargs)

    monkeypatch.setattr(Dataset, "save_to_disk", disk_full_on_second)
    small = prepare_config("prepare.shard_size=8")
    with pytest.raises(
        PrepareError,
        match=r"could not write .*shard_00001\.tmp \(.*No space left on device\); the "
        r"shards finished before it are kept",
    ):
        prepare(small, SAMPLE, out)
    assert {"shard_00000", "shard_00000.json"} <= {p.name for p in work.iterdir()} and not (work / ".lock").exists()
    (work / "shard_00001.tmp").mkdir()  # as a crash in the middle of that write would leave it
    (work / "shard_00001.tmp" / "state.json").write_text("{ cut off")
    monkeypatch.setattr(Dataset, "save_to_disk", real_save)
    manifest = prepare(small, SAMPLE, out)
    assert manifest["kept"] == 32 and manifest["encoded"] == 24  # shard 0's 8 clips came from the first run
    assert not work.exists() and kind_of(out) == "dataset"


def test_a_dataset_prepared_into_the_run_folder_is_no_obstacle(codes_dir, tmp_path):
    """The demo's config prepares its codes into the run folder: training takes that folder as its run."""
    run = tmp_path / "run"
    shutil.copytree(codes_dir, run / "codes")
    train(tiny(run / "codes", run, "train.max_steps=1", "data.eval_size=0", "train.report_to=none"))
    assert kind_of(run) == RUN and kind_of(run / "codes") == "dataset" and (run / "final").is_dir()
