"""Kill `dia-tpu train` with SIGKILL at random moments, resume with `--resume auto`, and check the end.

    .venv/bin/python scripts/chaos_resume.py [--trials 20] [--seed 0] [--steps 24] [--kills 2]

One reference run trains a tiny Dia on the bundled sample (saving every step, keeping 2) without interruption.
Each trial then runs the same training in a fresh folder, kills it `--kills` times (every other kill waits for a
checkpoint being written, `step_N.tmp`, and strikes inside it; the others strike at a random time in the run),
each time running `--resume auto` again, with no other step in between, until a run finishes. A trial passes
when its final weights equal the reference's bit for bit. One line per trial says where each kill landed (for
a kill inside a save, which files of the checkpoint were written), then a summary line.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tests' tiny model (tests/conftest.py), saving at every step.
TINY = [
    "model.architecture.encoder_config.hidden_size=64", "model.architecture.encoder_config.intermediate_size=128",
    "model.architecture.encoder_config.head_dim=16", "model.architecture.decoder_config.hidden_size=64",
    "model.architecture.decoder_config.intermediate_size=128", "model.architecture.decoder_config.head_dim=16",
    "model.architecture.decoder_config.cross_head_dim=16", "model.architecture.decoder_config.cross_hidden_size=64",
    "data.max_audio_frames=48", "data.random_crop=true", "train.unconditional_frac=0.3", "train.batch_size=2",
    "train.warmup_steps=3", "train.learning_rate=1e-3", "train.save_every=1", "train.keep_last=2",
    "eval.eval_every=8", "eval.batch_size=2", "samples.every=0", "train.report_to=none",
]  # fmt: skip
# The files of a checkpoint in the order a save writes them.
STAGES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "config.json",
          "config.yaml", "train_state.json", "checkpoint.json")  # fmt: skip


def command(codes: Path, run_dir: Path, steps: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "dia_tpu", "train", "--config", str(ROOT / "configs/demo.yaml"), *TINY,
            f"data.dataset={codes}", f"output.dir={run_dir}", f"train.max_steps={steps}",
            *(["--resume", "auto"] if resume else [])]  # fmt: skip


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
    written = [name for name in STAGES if (building[-1] / name).exists()]
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


def finish(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"resume failed (exit {done.returncode}): {done.stderr[-2000:]}")


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    first, second = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def trial(codes: Path, reference: Path, run_dir: Path, steps: int, kills: int, rng: random.Random,
          budget: float) -> tuple[bool, str]:  # fmt: skip
    """One trial: `kills` kills and resumes, then a resume to the end; (passed, what happened)."""
    landed = []
    for k in range(kills):
        spot = kill_one_run(command(codes, run_dir, steps, resume=k > 0), run_dir, rng, k % 2 == 1, budget)
        if spot is None:
            landed.append("finished before the kill")
            break
        landed.append(spot)
    finish(command(codes, run_dir, steps, resume=True))
    passed = same_weights(reference, run_dir)
    return passed, "; ".join(landed) + (" -> identical" if passed else " -> DIFFERENT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of each run")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial before the run may finish")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    from dia_tpu.config import load
    from dia_tpu.data.prepare import prepare

    work = Path(args.work or tempfile.mkdtemp(prefix="chaos_"))
    codes = work / "codes"
    if not codes.is_dir():
        prepare(load(ROOT / "configs/demo.yaml"), ROOT / "data/sample", codes)
    reference = work / "reference"
    started = time.monotonic()
    finish(command(codes, reference, args.steps, resume=False))
    budget = time.monotonic() - started  # one whole run, start-up included: kills land anywhere in it
    rng = random.Random(args.seed)
    passed = 0
    for i in range(args.trials):
        ok, story = trial(codes, reference, work / f"trial_{i:02d}", args.steps, args.kills, rng, budget)
        passed += ok
        print(f"trial {i + 1:2d}: {story}", flush=True)
    print(f"{args.trials} trials, {args.kills} kills each: {passed} identical to the uninterrupted run, "
          f"{args.trials - passed} different")  # fmt: skip
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
