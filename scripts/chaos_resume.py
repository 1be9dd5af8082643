"""Kill `dia-tpu train` with SIGKILL inside every stage of a save and at random moments, resume with
`--resume auto`, and check the end.

    .venv/bin/python scripts/chaos_resume.py [--trials 20] [--seed 0] [--steps 24] [--kills 2] [--no-stages]

One reference run trains a tiny Dia on the bundled sample (saving every step, keeping 2) without interruption.
Every trial runs the same training in a fresh folder, kills it, runs the same command with `--resume auto` (no
other step in between) until a run finishes, and passes when its final weights equal the reference's bit for
bit. One line per trial says where each kill landed, then a summary line.

- **Stage trials** (one per stage, unless `--no-stages`): the run kills itself inside one stage of a chosen
  save: half-way through writing the model, the optimizer, the scheduler, the RNG file, a side file
  (`config.yaml`), the training state or the completion mark; just before the rename into place; between the
  two renames that replace `best/`; half-way through deleting a rotated checkpoint; half-way through uploading
  a checkpoint to the mirror, after which the machine "vanishes" (the run folder is deleted) and the resume
  starts from the mirror alone.
- **Random trials** (`--trials`): `--kills` kills, every other one inside a checkpoint being written
  (`step_N.tmp`), the others at a random time. The runs mirror to a local folder, and after half of the kills
  the run folder is deleted, so the resume fetches from the mirror.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tests' seeded random codec and tiny model (tests/conftest.py), saving at every step. The random codec
# keeps the files a save writes to the checkpoint's own (an export of a folder codec writes a second
# model.safetensors, which a strike counting that file's writes would hit instead).
RANDOM_CODEC = [
    "model.codec=null",
    "model.codec_architecture={encoder_hidden_size: 8, decoder_hidden_size: 32, sampling_rate: 44100}",
]
TINY = [
    *RANDOM_CODEC,
    "model.architecture.encoder_config.hidden_size=64",
    "model.architecture.encoder_config.intermediate_size=128",
    "model.architecture.encoder_config.head_dim=16",
    "model.architecture.decoder_config.hidden_size=64",
    "model.architecture.decoder_config.intermediate_size=128",
    "model.architecture.decoder_config.head_dim=16",
    "model.architecture.decoder_config.cross_head_dim=16",
    "model.architecture.decoder_config.cross_hidden_size=64",
    "data.max_audio_frames=48",
    "data.random_crop=true",
    "train.unconditional_frac=0.3",
    "train.mixed_precision=no",  # fp32 on every machine, as the tests train
    "train.batch_size=2",
    "train.warmup_steps=3",
    "train.learning_rate=1e-3",
    "train.save_every=1",
    "train.keep_last=2",
    "eval.eval_every=8",
    "eval.batch_size=2",
    "samples.every=0",
    "train.report_to=none",
]
# The files of a checkpoint in the order a save writes them.
FILES = (
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "config.json",
    "config.yaml",
    "train_state.json",
    "checkpoint.json",
)
# Where a stage trial strikes: half-way through writing one of these files, or one of the moves after them.
STAGES = (
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "config.yaml",
    "train_state.json",
    "checkpoint.json",
    "rename",
    "rename best",
    "rotation",
    "mirror upload",
)


def command(
    codes: Path,
    run_dir: Path,
    steps: int,
    resume: bool,
    mirror: Path | None = None,
    strike: tuple[str, int] | None = None,
) -> list[str]:
    """The training command; with `strike` (stage, save number) it kills itself there."""
    run = (
        [sys.executable, "-m", "dia_tpu"]
        if strike is None
        else [sys.executable, __file__, "--strike", strike[0], "--at", str(strike[1]), "--"]
    )
    return [
        *run,
        "train",
        "--config",
        str(ROOT / "configs/demo.yaml"),
        *TINY,
        f"data.dataset={codes}",
        f"output.dir={run_dir}",
        f"train.max_steps={steps}",
        *([f"output.mirror={mirror}"] if mirror else []),
        *(["--resume", "auto"] if resume else []),
    ]


# In the killed run's own process: hooks that SIGKILL it at one stage of one save.


def strike_at(stage: str, at_save: int) -> None:
    """Make this process kill itself at `stage` of its `at_save`-th checkpoint save (`rename best`: of its
    first replacement of best/; `mirror upload`: of the upload of checkpoint `at_save`)."""
    import accelerate.checkpointing as accelerate_checkpointing
    import torch

    import dia_tpu.training.checkpoint as checkpoint
    import dia_tpu.training.recipe as recipe
    from dia_tpu.artifacts import STEP_DIR
    from dia_tpu.artifacts.owner import aside
    from dia_tpu.config import Config
    from dia_tpu.training.mirror_folder import MirrorFolder

    saves, armed = [0, 0], [False]  # rotating saves, best saves; whether this save is the one

    def die(partial: Path | None = None) -> None:
        if partial is not None:
            os.truncate(partial, partial.stat().st_size // 2)  # the write was cut off half-way
        print(f"chaos: SIGKILL at {stage}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def counted(save):
        def run(*args, folder=None, **kwargs):
            saves[folder is not None] += 1
            rotating, best = saves
            armed[0] = best == 2 if stage == "rename best" else (folder is None and rotating == at_save)
            try:
                return save(*args, folder=folder, **kwargs)
            finally:
                armed[0] = False

        return run

    def writes(real, name_of):
        def run(*args, **kwargs):
            result = real(*args, **kwargs)
            target = name_of(*args, **kwargs)  # torch.save may be given a buffer
            if armed[0] and isinstance(target, (str, os.PathLike)) and Path(target).name == stage:
                die(Path(target))
            return result

        return run

    def put_in_place(building: Path, path: Path, real=checkpoint.put_in_place) -> None:
        if armed[0] and stage == "rename":
            die()
        if armed[0] and stage == "rename best" and path.exists():
            path.rename(aside(path, "replaced"))  # the first of put_in_place's two renames
            die()
        real(building, path)

    def rmtree(path, *args, real=shutil.rmtree, **kwargs):
        if armed[0] and stage == "rotation" and STEP_DIR.match(Path(path).name):
            next(p for p in Path(path).iterdir() if p.is_file()).unlink()
            die()
        real(path, *args, **kwargs)

    def upload(self, staged, name, step, real=MirrorFolder.upload):
        # The first checkpoint upload from save `at_save` on (one that newer saves supersede is skipped).
        if stage == "mirror upload" and name.startswith("checkpoints/") and step >= at_save:
            files = sorted(p for p in staged.iterdir() if p.is_file())
            for file in files[: len(files) // 2]:
                self.fs.makedirs(self._path(name), exist_ok=True)
                self.fs.put_file(str(file), self._path(f"{name}/{file.name}"))
            die()
        return real(self, staged, name, step)

    recipe.save_checkpoint = counted(recipe.save_checkpoint)
    accelerate_checkpointing.save = writes(accelerate_checkpointing.save, lambda obj, f, **kw: f)
    torch.save = writes(torch.save, lambda obj, f, *a, **kw: f)
    Config.save = writes(Config.save, lambda self, path: path)
    checkpoint.TrainState.save = writes(checkpoint.TrainState.save, lambda self, path: path)
    checkpoint.mark_complete = writes(checkpoint.mark_complete, lambda folder, step: folder / "checkpoint.json")
    checkpoint.put_in_place = put_in_place
    shutil.rmtree = rmtree
    MirrorFolder.upload = upload


# The trials.


def saves_since(run_dir: Path, since: float) -> list[Path]:
    """Checkpoints being built that this run started (a killed run's leftover `.tmp` folders are older)."""
    if not (run_dir / "checkpoints").is_dir():
        return []
    return sorted(p for p in (run_dir / "checkpoints").glob("step_*.tmp") if p.stat().st_mtime >= since)


def where(run_dir: Path, since: float) -> str:
    """Where a kill landed, read from what it left behind."""
    building = saves_since(run_dir, since)
    if not building:
        return "between saves"
    written = [name for name in FILES if (building[-1] / name).exists()]
    stage = f"after {written[-1]}" if written else "before any file"
    return f"inside the save of {building[-1].name.removesuffix('.tmp')} ({stage})"


def kill_one_run(argv: list[str], run_dir: Path, rng: random.Random, in_save: bool, budget: float) -> str | None:
    """Start `argv`, SIGKILL it (inside a save, or at a random time), and say where; None when it finished."""
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:  # the run's output, for a failed trial
        return _kill(subprocess.Popen(argv, stdout=log, stderr=log), run_dir, rng, in_save, budget)


def _kill(process: subprocess.Popen, run_dir: Path, rng: random.Random, in_save: bool, budget: float) -> str | None:
    since = time.time()
    strike = time.monotonic() + rng.uniform(2.0, budget)
    while process.poll() is None:
        if (in_save and saves_since(run_dir, since)) or (not in_save and time.monotonic() >= strike):
            if in_save:
                time.sleep(rng.uniform(0.0, 0.05))  # land at different moments of the save
            landed = where(run_dir, since)
            process.send_signal(signal.SIGKILL)
            process.wait()
            return landed
        time.sleep(0.002)
    if process.returncode != 0:
        raise RuntimeError(f"{run_dir}: training exited {process.returncode}; see {run_dir}.log")
    return None


def finish(argv: list[str], log: Path | None = None) -> None:
    """Run `argv` to the end (its output appended to `log`)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if log is not None:
        with open(log, "a") as out:
            out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"resume failed (exit {done.returncode}): {done.stderr[-2000:]}")


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    first, second = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def stage_trial(codes: Path, reference: Path, run_dir: Path, steps: int, stage: str, at_save: int) -> tuple[bool, str]:
    """A run that kills itself at `stage` of save `at_save`, then a resume to the end; (passed, what happened)."""
    mirror = run_dir.with_name(run_dir.name + "_mirror") if stage == "mirror upload" else None
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "a") as out:
        killed = subprocess.run(
            command(codes, run_dir, steps, False, mirror, (stage, at_save)),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if killed.returncode != -signal.SIGKILL:
        return False, f"{stage}: the run was not killed (exit {killed.returncode}; see {run_dir}.log)"
    story = f"killed at {stage} of save {at_save}" if stage != "rename best" else "killed between the renames of best/"
    if mirror is not None:
        shutil.rmtree(run_dir)  # the machine vanished with its disk
        story += ", the run folder deleted"
    finish(command(codes, run_dir, steps, True, mirror), log)
    passed = same_weights(reference, run_dir)
    return passed, story + (" -> identical" if passed else " -> DIFFERENT")


def trial(
    codes: Path, reference: Path, run_dir: Path, steps: int, kills: int, rng: random.Random, budget: float
) -> tuple[bool, str]:
    """`kills` random kills and resumes (after half of them the run folder is deleted and the resume fetches
    from the mirror), then a resume to the end; (passed, what happened)."""
    mirror, landed = run_dir.with_name(run_dir.name + "_mirror"), []
    for k in range(kills):
        spot = kill_one_run(command(codes, run_dir, steps, k > 0, mirror), run_dir, rng, k % 2 == 1, budget)
        if spot is None:
            landed.append("finished before the kill")
            break
        if rng.random() < 0.5 and run_dir.exists():  # a kill at start-up may come before the folder
            shutil.rmtree(run_dir)
            spot += ", the run folder deleted"
        landed.append(spot)
    finish(command(codes, run_dir, steps, True, mirror))
    passed = same_weights(reference, run_dir)
    return passed, "; ".join(landed) + (" -> identical" if passed else " -> DIFFERENT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="random trials, after the stage trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of each run")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per random trial before the run may finish")
    parser.add_argument("--no-stages", action="store_true", help="leave out the trials that strike each stage")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--strike", choices=STAGES, help=argparse.SUPPRESS)  # the killed run's own process
    parser.add_argument("--at", type=int, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.strike:
        strike_at(args.strike, args.at)
        from dia_tpu.cli import main as cli

        cli(rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    from dia_tpu.config import load
    from dia_tpu.data.prepare import prepare

    work = Path(args.work or tempfile.mkdtemp(prefix="chaos_"))
    codes = work / "codes"
    if not codes.is_dir():
        prepare(load(ROOT / "configs/demo.yaml", RANDOM_CODEC), ROOT / "data/sample", codes)
    reference = work / "reference"
    started = time.monotonic()
    finish(command(codes, reference, args.steps, resume=False))
    budget = time.monotonic() - started  # one whole run, start-up included: kills land anywhere in it
    rng = random.Random(args.seed)
    results = []
    for i, stage in enumerate([] if args.no_stages else STAGES):
        # A save after rotation has begun (keep_last is 2) and before the last one.
        ok, story = stage_trial(
            codes, reference, work / f"stage_{i:02d}", args.steps, stage, rng.randint(3, args.steps - 1)
        )
        results.append(ok)
        print(f"stage {i + 1:2d}: {story}", flush=True)
    for i in range(args.trials):
        ok, story = trial(codes, reference, work / f"trial_{i:02d}", args.steps, args.kills, rng, budget)
        results.append(ok)
        print(f"trial {i + 1:2d}: {story}", flush=True)
    print(
        f"{len(results) - args.trials} stage trials, {args.trials} random trials ({args.kills} kills each): "
        f"{sum(results)} identical to the uninterrupted run, {len(results) - sum(results)} different"
    )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
