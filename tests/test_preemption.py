"""Training that survives what spot machines and shared disks do to it: a signal stops at a step boundary
with a complete checkpoint, a checkpoint cut off while being written is never loaded, a planted pickle is
never run, one run holds a folder, and a full or unwritable disk is one clear error."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, reset_accelerate, tiny, two_process_launch, weights

from dia_tpu.artifacts import RunFolder, is_complete
from dia_tpu.artifacts.lock import InUse
from dia_tpu.artifacts.owner import RUN, mark
from dia_tpu.training.recipe import train

QUICK = ["train.save_every=1000", "eval.eval_every=1000", "train.report_to=none"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# Two CPU processes on two cores: one thread each.
TWO_PROCESSES = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}


def launch(argv: list[str], run_dir: Path, env: dict | None = None) -> subprocess.Popen:
    """`argv` as a process, returned once the run has written its config (its loop is about to start)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (run_dir / "config.yaml").is_file():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never started its loop"
        time.sleep(0.05)
    return process


def stopped_at(stderr: str) -> int:
    found = re.search(r"stopped by SIGTERM at step (\d+); the checkpoint is (\S+)\.", stderr)
    assert found, stderr[-3000:]
    assert Path(found[2]).name == f"step_{found[1]}" and is_complete(Path(found[2]))
    return int(found[1])


def test_sigterm_stops_with_a_complete_checkpoint_and_resumes_exactly(codes_dir, tmp_path):
    common = [*TINY, f"data.dataset={codes_dir}", "train.max_steps=80", *QUICK]
    straight = train(tiny(codes_dir, tmp_path / "straight", "train.max_steps=80", *QUICK)).parent
    reset_accelerate()
    run_dir, bucket = tmp_path / "stopped", tmp_path / "bucket"
    process = launch(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "train",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            *common,
            f"output.dir={run_dir}",
            f"output.mirror={bucket}",
        ],
        run_dir,
    )
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    step = stopped_at(err)
    assert 0 < step < 80 and not (run_dir / "final").exists() and not (run_dir / ".lock").exists()
    # The stop checkpoint went to the mirror before the process exited.
    assert f"mirror: checkpoints/step_{step} (step {step}) is on {bucket}" in out, out[-3000:]
    assert is_complete(bucket / "checkpoints" / f"step_{step}")
    train(tiny(codes_dir, run_dir, "train.max_steps=80", *QUICK, "train.resume=auto"))
    assert_same_weights(straight, run_dir)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(codes_dir, tmp_path):
    """Only process 1 gets the signal; both agree at the next step boundary, so neither waits for the other.
    The run folder then loses the stop checkpoint: the resumed pair starts from the mirror's copy, which the
    main process fetches and both load."""
    bucket = tmp_path / "bucket"
    common = [*TINY, f"data.dataset={codes_dir}", "train.max_steps=60", "data.eval_size=0", *QUICK]
    common.append(f"output.mirror={bucket}")

    def two_processes(run_dir: Path, port: int, *extra: str) -> list[str]:
        return [
            *two_process_launch(port),
            str(ROOT / "dia_tpu/finetune_acc_tpu.py"),
            "--config",
            str(ROOT / "configs/demo.yaml"),
            *common,
            f"output.dir={run_dir}",
            *extra,
        ]

    run_dir = tmp_path / "ddp"
    launcher = launch(two_processes(run_dir, 29547), run_dir, TWO_PROCESSES)
    time.sleep(0.5)
    workers = [
        int(pid)
        for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGTERM)  # one of the two, whichever rank it is
    _, err = launcher.communicate(timeout=240)
    assert launcher.returncode != 0
    step = stopped_at(err)
    ckpt = run_dir / "checkpoints" / f"step_{step}"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert is_complete(bucket / "checkpoints" / f"step_{step}")
    shutil.rmtree(ckpt)
    done = subprocess.run(
        two_processes(run_dir, 29548, "train.resume=auto"),
        capture_output=True,
        text=True,
        timeout=300,
        env=TWO_PROCESSES,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"mirror: fetched checkpoints/step_{step} from" in done.stdout, done.stdout[-3000:]
    # Two processes of batch B step like one accumulating 2 x B (tests/test_train.py): the stopped and resumed
    # pair ends where one uninterrupted process does.
    one = tmp_path / "one"
    train(tiny(codes_dir, one, "train.max_steps=60", "data.eval_size=0", *QUICK, "train.gradient_accumulation_steps=2"))
    two, single = weights(run_dir), weights(one)
    for key in single:
        torch.testing.assert_close(two[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


def test_an_incomplete_checkpoint_is_set_aside_and_never_loaded(codes_dir, tmp_path, capsys):
    every_two = [
        "train.max_steps=6",
        "train.save_every=2",
        "train.keep_last=3",
        "eval.eval_every=1000",
        "train.report_to=none",
    ]
    straight = train(tiny(codes_dir, tmp_path / "straight", *every_two)).parent
    reset_accelerate()
    # The same run as if the machine died while writing step 6: its mark never got written, final/ neither.
    run_dir = tmp_path / "cut"
    shutil.copytree(straight, run_dir)
    shutil.rmtree(run_dir / "final")
    (run_dir / "checkpoints" / "step_6" / "checkpoint.json").unlink()
    (run_dir / "checkpoints" / "step_8.tmp").mkdir()  # a save cut off even earlier
    assert [p.name for p in RunFolder(run_dir).complete_checkpoints()] == ["step_2", "step_4"]
    capsys.readouterr()
    train(tiny(codes_dir, run_dir, *every_two, "train.resume=auto"))
    assert "resume: moved the incomplete checkpoint step_6 to " in capsys.readouterr().out
    assert [p.name.split("-")[0] for p in (run_dir / "checkpoints" / "incomplete").iterdir()] == ["step_6"]
    assert is_complete(run_dir / "checkpoints" / "step_6")  # written again, whole
    assert_same_weights(straight, run_dir)
    # Named explicitly, a folder without its mark is refused.
    (run_dir / "checkpoints" / "step_4" / "checkpoint.json").unlink()
    reset_accelerate()
    with pytest.raises(ValueError, match="step_4 is not a complete checkpoint"):
        train(tiny(codes_dir, tmp_path / "other", *every_two, f"train.resume={run_dir / 'checkpoints' / 'step_4'}"))


class _RunsCode:
    """Unpickling this runs a shell command (touching a marker file): what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_a_planted_pickle_is_never_run(codes_dir, tmp_path, planted):
    run_dir = tmp_path / "run"
    train(
        tiny(
            codes_dir,
            run_dir,
            "train.max_steps=2",
            "train.save_every=2",
            "eval.eval_every=1000",
            "train.report_to=none",
        )
    )
    reset_accelerate()
    ckpt = run_dir / "checkpoints" / "step_2"
    marker = tmp_path / "code_ran"
    (ckpt / planted).write_bytes(pickle.dumps(_RunsCode(marker)))
    # A crafted checkpoint comes with a completion mark that matches it.
    mark = json.loads((ckpt / "checkpoint.json").read_text())
    if planted in mark["files"]:
        mark["files"][planted] = (ckpt / planted).stat().st_size
        (ckpt / "checkpoint.json").write_text(json.dumps(mark))
    with pytest.raises(ValueError, match=re.escape(planted)):
        train(
            tiny(
                codes_dir,
                tmp_path / "resumed",
                "train.max_steps=2",
                "train.save_every=2",
                "eval.eval_every=1000",
                "train.report_to=none",
                f"train.resume={ckpt}",
            )
        )
    assert not marker.exists()


def test_one_run_per_folder(codes_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mark(run_dir, RUN)  # as the holder marked it
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00"})
        )
        with pytest.raises(InUse, match=f"in use by another run \\(pid {holder.pid} on "):
            train(tiny(codes_dir, run_dir, "train.max_steps=2"))
        assert not (run_dir / "config.yaml").exists()  # refused before loading anything
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale, taken over, and released at the end.
    reset_accelerate()
    train(tiny(codes_dir, run_dir, "train.max_steps=2", *QUICK))
    assert (run_dir / "final").is_dir() and not (run_dir / ".lock").exists()


def test_an_unwritable_output_dir_fails_before_any_work(codes_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="output.dir .*a_file/run cannot be created"):
        train(tiny(codes_dir, blocker / "run", "train.max_steps=2"))


def test_a_full_disk_stops_before_a_partial_checkpoint(codes_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    common = [
        "train.max_steps=4",
        "train.save_every=2",
        "eval.eval_every=1000",
        "eval.keep_best=false",
        "train.report_to=none",
    ]
    Usage = namedtuple("Usage", "total used free")
    real = shutil.disk_usage
    # The disk holds the first checkpoint, then fills up.
    monkeypatch.setattr(
        "dia_tpu.training.checkpoint.shutil.disk_usage",
        lambda path: real(path) if not (run_dir / "checkpoints").exists() else Usage(1, 1, 10_000),
    )
    with pytest.raises(
        ValueError,
        match=r"not enough disk space for checkpoint .*step_4: .*last complete checkpoint "
        r"is .*step_2",
    ):
        train(tiny(codes_dir, run_dir, *common))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_2"]
    monkeypatch.undo()

    # A write that fails half-way (as torch.save does on a full disk) is one error, and the partial save is removed.
    reset_accelerate()

    def disk_full(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr("accelerate.checkpointing.save", disk_full)
    with pytest.raises(ValueError, match=r"could not write checkpoint .*step_4 \(PytorchStreamWriter failed"):
        train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))
    monkeypatch.undo()
    assert [p.name for p in RunFolder(run_dir).complete_checkpoints()] == ["step_2"]
    reset_accelerate()
    train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))
    assert is_complete(run_dir / "checkpoints" / "step_4")


@pytest.fixture
def small_disk(tmp_path):
    """A 26 MiB tmpfs: room for one tiny checkpoint (16 MiB) and the run's side files, not for a second."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=26m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the simulated full disk above still runs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_real_full_disk_is_one_clear_error_and_loses_nothing(codes_dir, small_disk, monkeypatch):
    run_dir = small_disk / "run"
    common = [
        "train.max_steps=4",
        "train.save_every=2",
        "train.keep_last=1",
        "eval.eval_every=1000",
        "eval.keep_best=false",
        "train.report_to=none",
    ]
    # The free-space check stops before the second checkpoint: it would not fit beside the first.
    with pytest.raises(
        ValueError,
        match=r"not enough disk space for checkpoint .*step_4: it needs about 0.02 GiB "
        r"and 0.0\d GiB are free.*last complete checkpoint is .*step_2",
    ):
        train(tiny(codes_dir, run_dir, *common))
    # Without the check, the write itself hits the full disk (ENOSPC) half-way: the same kind of error, and
    # the first checkpoint is untouched.
    reset_accelerate()
    monkeypatch.setattr("dia_tpu.training.checkpoint._check_space", lambda *args: None)
    full = r"could not write checkpoint .*step_4 \(the disk is full: \d+\.\d MiB free on .*disk/run/checkpoints; "
    with pytest.raises(ValueError, match=full + r".*\); the last complete checkpoint is .*step_2"):
        train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))  # torch.save fails in the optimizer
    # A disk fuller still: safetensors fails in the model's weights.
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 2**20))
    reset_accelerate()
    with pytest.raises(ValueError, match=full + r"Error while serializing"):
        train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))
    monkeypatch.undo()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_2"]  # the partial save removed
    assert is_complete(run_dir / "checkpoints" / "step_2")
    filler.unlink()
    # Space freed (the disk grown), the same command goes on from step_2.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    reset_accelerate()
    train(tiny(codes_dir, run_dir, *common, "train.resume=auto"))
    assert [p.name for p in RunFolder(run_dir).complete_checkpoints()] == ["step_4"]
    assert (run_dir / "final" / "model.safetensors").is_file()
