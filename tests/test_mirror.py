"""`output.mirror`: complete copies of a run's checkpoints on another filesystem (fsspec's memory filesystem
here, and a local folder standing in for a bucket), rotated like the run's own, and a fresh machine that
resumes from them."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import pytest
from conftest import reset_accelerate, tiny, weights

from dia_tpu.artifacts import COMPLETE_FILE, RunFolder, completion_mark, is_complete, mark_complete
from dia_tpu.training.mirror import Mirror, MirrorError
from dia_tpu.training.recipe import train


def fake_checkpoint(folder: Path, step: int, size: int = 64) -> Path:
    """A finished folder as a save leaves it: files, then the completion mark."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step % 256]) * size)
    (folder / "train_state.json").write_text(f'{{"step": {step}}}\n')
    mark_complete(folder, step)
    return folder


def memory_mirror(run: RunFolder, keep_last: int = 2) -> Mirror:
    return Mirror(f"memory://mirror-{uuid.uuid4().hex}", run, keep_last, report=lambda line: None)


def test_uploads_are_whole_copies_rotated_like_the_run(tmp_path):
    run = RunFolder(tmp_path / "run")
    with memory_mirror(run) as mirror:
        for step in (1, 2, 3):
            mirror.send(fake_checkpoint(run.checkpoint(step), step), step)
        mirror.send(fake_checkpoint(run.best, 2), 2)
        # Rotation (keep_last 2) and a new best/ remove the originals; the links waiting to be uploaded keep them.
        shutil.rmtree(run.checkpoint(1))
        shutil.rmtree(run.best)
    assert [step for step, _ in mirror.complete_checkpoints()] == [2, 3]
    assert mirror.mark("checkpoints/step_3") == completion_mark(run.checkpoint(3))
    assert mirror.mark("best")["step"] == 2
    assert not run.staging.exists()


def test_an_upload_cut_off_is_never_whole_and_the_run_goes_on(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run")
    lines = []
    mirror = Mirror(f"memory://mirror-{uuid.uuid4().hex}", run, 2, report=lines.append)
    with mirror:
        mirror.send(fake_checkpoint(run.best, 1), 1)
    assert mirror.mark("best")["step"] == 1
    real, calls = mirror.fs.put_file, []

    def connection_lost(local, remote, **kwargs):
        calls.append(remote)
        if len(calls) == 2:
            raise ConnectionError("connection reset by peer")
        return real(local, remote, **kwargs)

    monkeypatch.setattr(mirror.fs, "put_file", connection_lost)
    shutil.rmtree(run.best)
    with mirror:
        mirror.send(fake_checkpoint(run.best, 5, size=80), 5)
    # The old best/ lost its mark before the new files went up, and the new one never got its mark.
    assert mirror.mark("best") is None and mirror.failed == ["best"]
    assert any("warning: could not upload best" in line and "connection reset" in line for line in lines), lines
    assert any("1 upload(s)" in line and "failed (best)" in line for line in lines), lines


def test_saves_faster_than_uploads_skip_superseded_checkpoints(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run")
    mirror = memory_mirror(run, keep_last=2)
    real, release, uploaded = mirror.fs.put_file, threading.Event(), []

    def slow(local, remote, **kwargs):
        release.wait(timeout=30)
        uploaded.append(remote.split("/")[-2])
        return real(local, remote, **kwargs)

    monkeypatch.setattr(mirror.fs, "put_file", slow)
    with mirror:
        for step in range(1, 6):
            mirror.send(fake_checkpoint(run.checkpoint(step), step), step)
        release.set()
    # step_1 was on its way when the rest were queued; of step_2..5 only the newest two were worth sending.
    assert sorted(set(uploaded)) == ["step_1", "step_4", "step_5"]
    assert [step for step, _ in mirror.complete_checkpoints()] == [4, 5]


def test_a_fork_moves_the_mirrors_newer_checkpoints_aside(tmp_path):
    run = RunFolder(tmp_path / "run")
    mirror = memory_mirror(run, keep_last=3)
    with mirror:
        for step in (1, 2, 3):
            mirror.send(fake_checkpoint(run.checkpoint(step), step), step)
    # A fresh machine that has step_1 only (sent by a colleague) and wants to resume from it.
    shutil.rmtree(run.checkpoint(2))
    shutil.rmtree(run.checkpoint(3))
    with pytest.raises(
        MirrorError,
        match=r"holds checkpoints newer than .*step_1 \(checkpoints/step_2, "
        r"checkpoints/step_3\).*--fork",
    ):
        mirror.check_fork(run.checkpoint(1), fork=False)
    mirror.check_fork(run.checkpoint(1), fork=True)
    mirror.start(None, run.checkpoint(1))
    assert [step for step, _ in mirror.complete_checkpoints()] == [1]
    aside = mirror.fs.glob(f"{mirror.root}/checkpoints/forked-*/step_*")
    assert sorted(path.rsplit("/", 1)[-1] for path in aside) == ["step_2", "step_3"]


def test_a_fresh_machine_resumes_from_the_mirror(codes_dir, tmp_path, capsys):
    """A run mirrored to another folder (a bucket's stand-in) loses its machine: the same command on an empty
    output.dir fetches the newest complete checkpoint, skips a copy cut off mid-upload, and ends where an
    uninterrupted run ends."""
    run_dir, bucket = tmp_path / "run", tmp_path / "bucket"
    common = [
        "train.max_steps=4",
        "train.save_every=1",
        "train.keep_last=2",
        "eval.eval_every=2",
        "train.report_to=none",
        f"output.mirror={bucket}",
    ]
    train(tiny(codes_dir, run_dir, *common))
    out = capsys.readouterr().out
    assert "mirror: checkpoints/step_4 (step 4) is on" in out and "mirror: final (step 4)" in out, out
    assert sorted(p.name for p in (bucket / "checkpoints").iterdir()) == ["step_3", "step_4"]
    assert is_complete(bucket / "checkpoints/step_4") and is_complete(bucket / "best")
    assert (bucket / "final/model.safetensors").is_file() and is_complete(bucket / "final")
    straight = weights(run_dir)

    # The machine vanishes with its disk, and the upload of step_4 was cut off before its mark.
    shutil.rmtree(run_dir)
    (bucket / "checkpoints/step_4" / COMPLETE_FILE).unlink()
    shutil.rmtree(bucket / "final")
    reset_accelerate()
    train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))
    out = capsys.readouterr().out
    assert "mirror: fetched checkpoints/step_3 from" in out, out
    assert weights(run_dir).keys() == straight.keys()
    for key, tensor in straight.items():
        assert weights(run_dir)[key].equal(tensor), key
    assert is_complete(bucket / "checkpoints/step_4") and is_complete(bucket / "final")

    # A run folder older than its mirror (a disk restored from a snapshot): the mirror's newer checkpoint wins.
    shutil.rmtree(run_dir / "checkpoints/step_4")
    shutil.rmtree(run_dir / "final")
    reset_accelerate()
    train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))
    out = capsys.readouterr().out
    assert "mirror: fetched checkpoints/step_4 from" in out
    # Every process started from the fetched step 4, so no step was trained again and none saved.
    assert "mirror: checkpoints/step_4 (step 4) is on" not in out, out
    assert all(weights(run_dir)[key].equal(tensor) for key, tensor in straight.items())


@pytest.mark.parametrize(
    ("mirror", "message"),
    [
        ("{blocker}/mirror", r"output.mirror .*a_file/mirror cannot be written"),
        ("nosuch://bucket/run", r"output.mirror nosuch://bucket/run: Protocol not known: nosuch"),
        ("gs://bucket/run", r"output.mirror gs://bucket/run: .*gcsfs.* \(pip install gcsfs\)"),
    ],
)
def test_an_unusable_mirror_fails_before_any_work(codes_dir, tmp_path, mirror, message):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    if mirror.startswith("gs://") and importlib_available("gcsfs"):
        pytest.skip("gcsfs is installed here: gs:// would try the network")
    run_dir = tmp_path / "run"
    with pytest.raises(MirrorError, match=message):
        train(tiny(codes_dir, run_dir, "train.max_steps=2", f"output.mirror={mirror.format(blocker=blocker)}"))
    assert not (run_dir / "config.yaml").exists() and not (run_dir / ".lock").exists()


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_a_mirror_from_before_marks_is_taken_and_marked(tmp_path):
    from dia_tpu.artifacts.owner import MARK_FILE

    run = RunFolder(tmp_path / "run")
    url = f"memory://mirror-{uuid.uuid4().hex}"
    with Mirror(url, run, 2, report=lambda line: None) as mirror:
        mirror.send(fake_checkpoint(run.checkpoint(1), 1), 1)
    mirror.fs.rm_file(f"{mirror.root}/{MARK_FILE}")  # as an older dia_tpu left it, with an upload cut off
    mirror.fs.pipe_file(f"{mirror.root}/checkpoints/step_2/model.safetensors", b"cut off")
    with Mirror(url, run, 2, report=lambda line: None):
        pass
    assert mirror.fs.exists(f"{mirror.root}/{MARK_FILE}")
    # The same names with no whole copy among them are someone else's.
    other = f"memory://mirror-{uuid.uuid4().hex}"
    mirror.fs.pipe_file(f"{other.removeprefix('memory://')}/checkpoints/step_2/model.safetensors", b"mine")
    with pytest.raises(MirrorError, match=r"holds files that are not a dia_tpu mirror \(checkpoints\)"):
        with Mirror(other, run, 2, report=lambda line: None):
            pass
