"""Which checkpoint a run starts from, and what changed since it was written.

- `train.resume: auto` takes the newest complete checkpoint of the run; incomplete ones are moved to
  `checkpoints/incomplete/` (kept, never loaded).
- An explicit checkpoint of this run that is older than its newest one is refused: continuing from it would
  write over the later history. `train.fork` (`--fork`) continues from it anyway, after moving the newer
  checkpoints (and a newer `best/`) to `checkpoints/forked-<time>/`.
- The resumed run's config is compared with the checkpoint's. A change to what the weights are (the model's
  shape, codec, LoRA or freezing) is an error; a change to how training goes on (learning rate, schedule,
  batch, data) is an error unless `train.resume_changes: allow`, and then it takes effect and is recorded in
  `output.dir/resume_changes.jsonl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from dia_tpu.artifacts import COMPLETE_FILE, CONFIG_FILE, RunFolder, completion_mark, is_complete
from dia_tpu.artifacts.weights import weights_file
from dia_tpu.config import Config, ConfigError, read_saved
from dia_tpu.errors import UserError
from dia_tpu.training.state import TrainState
from dia_tpu.training.step import group_settings

# Settings that decide what the saved weights are: a checkpoint cannot be resumed with others.
FIXED = (
    "model.pretrained",
    "model.pretrained_format",
    "model.architecture",
    "model.codec",
    "model.codec_architecture",
    "model.stereo",
    "model.delay_pattern",
    "model.attention_scale",
    "model.lora",
    "model.freeze",
)
# Settings of `train` and `data` that only say how often to log, save or report, how to load, how the work is
# spread over devices, or where the result is published: free to change.
FREE = (
    "train.resume",
    "train.fork",
    "train.overwrite",
    "train.resume_changes",
    "train.log_every",
    "train.save_every",
    "train.keep_last",
    "train.report_to",
    "data.num_workers",
    "train.sharding",
    "train.mesh_data",
    "train.push_to_hub",
    "train.hub_",
)
CHANGES_FILE = "resume_changes.jsonl"


@dataclass
class Resume:
    """Where a run starts: the checkpoint to load (None: from scratch), and what the main process moves aside
    before training: incomplete checkpoints, and for a fork the newer ones."""

    checkpoint: Path | None
    incomplete: list[Path] = field(default_factory=list)
    forked: list[Path] = field(default_factory=list)


def resolve_resume(resume: str | None, run_dir: str | Path, fork: bool = False) -> Resume:
    """None, "auto" or an explicit folder, checked before any work; nothing is moved here."""
    run = RunFolder(run_dir)
    if resume is None:
        return Resume(None)
    if resume == "auto":
        found = run.list_checkpoints()
        complete = [p for p in found if is_complete(p)]
        return Resume(complete[-1] if complete else None, [p for p in found if p not in complete])
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume: checkpoint folder not found: {path}")
    if weights_file(path) is None:
        raise FileNotFoundError(f"train.resume: {path} holds no saved model state: not a checkpoint folder")
    if not is_complete(path):
        raise UserError(
            f"train.resume: {path} is not a complete checkpoint (no valid {COMPLETE_FILE}): it was "
            "cut off while being written, or by an older dia_tpu; use another one"
        )
    newer = _newer_than(run, path)
    if newer and not fork:
        newest = max(reversed(newer), key=_saved_step)  # a step_N before best/ of the same step
        raise UserError(
            f"train.resume: {path} is older than this run's newest checkpoint {newest.name} (step "
            f"{_saved_step(newest)}): going on "
            "from it would write over the later checkpoints. Use --resume auto to continue the run, "
            "or add --fork (train.fork=true) to branch from it: the newer checkpoints are then moved "
            "to checkpoints/forked-<time>/"
        )
    return Resume(path, forked=newer)


def _newer_than(run: RunFolder, path: Path) -> list[Path]:
    """The run's complete checkpoints (and best/) written after `path`, when `path` is one of the run's own."""
    if path.resolve().parent != run.checkpoints.resolve():
        return []
    step = _saved_step(path)
    newer = [p for p in run.complete_checkpoints() if _saved_step(p) > step]
    best = completion_mark(run.best)
    if best is not None and best["step"] > step:
        newer.insert(0, run.best)
    return newer


def _saved_step(folder: Path) -> int:
    return completion_mark(folder)["step"]


def set_aside(run: RunFolder, resume: Resume) -> list[str]:
    """Move the incomplete and, for a fork, the newer checkpoints out of the way; returns what was moved."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moves = [(p, run.set_aside / f"{p.name}-{stamp}") for p in resume.incomplete]
    moves += [(p, run.checkpoints / f"forked-{stamp}" / p.name) for p in resume.forked]
    lines = []
    for source, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
        why = "incomplete" if source in resume.incomplete else "newer than the fork point"
        lines.append(f"resume: moved the {why} checkpoint {source.name} to {target}")
    return lines


def config_changes(cfg: Config, checkpoint: Path) -> dict[str, tuple]:
    """What `cfg` sets differently from the config saved with `checkpoint`, as {key: (saved, now)}; a change
    that cannot work is a ConfigError, one that changes training an error unless train.resume_changes=allow."""
    saved_file = checkpoint / CONFIG_FILE
    if not saved_file.is_file():
        return {}
    before, now = _flat(read_saved(saved_file).to_dict()), _flat(cfg.to_dict())
    changed = {
        key: (before.get(key), now.get(key))
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    }
    fixed = {k: v for k, v in changed.items() if k.startswith(FIXED)}
    if fixed:
        raise ConfigError(
            f"{checkpoint} was trained with other model settings; resume it with the same ones:\n  - "
            + "\n  - ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in fixed.items())
        )
    training = {k: v for k, v in changed.items() if k.startswith(("train.", "data.")) and not k.startswith(FREE)}
    if training and cfg.train.resume_changes != "allow":
        raise ConfigError(
            f"the config changes how training goes on since {checkpoint} was saved; set "
            "train.resume_changes=allow to go on with the new values, or resume with the old ones:\n  - "
            + "\n  - ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in training.items())
        )
    return training


def apply_changes(changes: dict[str, tuple], cfg: Config, optimizer, scheduler, state: TrainState) -> None:
    """Make allowed changes take effect on the restored state: the optimizer's settings and base learning rate
    (the schedule itself is rebuilt from the config, so warm-up, length and kind follow it already), and the data
    position when the batch size changed (the same items consumed, counted in batches of the new size)."""
    inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate's wrapper holds the LambdaLR
    settings = group_settings(cfg.train)
    for group, wanted in zip(optimizer.param_groups, settings, strict=True):
        group.update(wanted, initial_lr=wanted["lr"])
    inner.base_lrs = [wanted["lr"] for wanted in settings]
    for group, base, factor in zip(optimizer.param_groups, inner.base_lrs, inner.lr_lambdas, strict=True):
        group["lr"] = base * factor(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]
    if "train.batch_size" in changes:
        before, now = changes["train.batch_size"]
        state.batches_in_epoch = state.batches_in_epoch * before // now


def record_changes(run: RunFolder, step: int, changes: dict[str, tuple]) -> None:
    with open(run.root / CHANGES_FILE, "a") as log:
        log.write(
            json.dumps(
                {
                    "step": step,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changes": {k: {"then": a, "now": b} for k, (a, b) in changes.items()},
                }
            )
            + "\n"
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "language_tags":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
