"""Opening and finishing a run, the phases around set-up and the loop that any training objective shares.

`open_run` checks everything it can before any work, makes the Accelerator, takes the run folder (its lock, the
mirror, the set-aside of checkpoints that are not to be loaded) and settles where the run starts from; `finish`
exports the trained model, sends the export to the mirror, ends the trackers and pushes to the Hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    broadcast_object_list,
)

from dia_tpu.artifacts import RunFolder
from dia_tpu.artifacts.lock import FolderLock
from dia_tpu.artifacts.owner import RUN
from dia_tpu.config import Config, ConfigError, check_run_files
from dia_tpu.console import TrainingStopped
from dia_tpu.data.shards import read_prepare_info
from dia_tpu.families import family_of
from dia_tpu.precision import choose, device_type
from dia_tpu.publish import check_token, push_export
from dia_tpu.training.meter import say
from dia_tpu.training.mirror import Mirror
from dia_tpu.training.output import check_output, earlier_run, start
from dia_tpu.training.resume import Resume, config_changes, resolve_resume, set_aside
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.sharding import Sharding, whole_weights
from dia_tpu.training.state import TrainState
from dia_tpu.training.step import check_optimizer
from dia_tpu.training.stop import StopRequest

_TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "all": ["tensorboard", "wandb"], "none": None}


@dataclass
class Session:
    """An open run: what every later phase works with."""

    cfg: Config
    run: RunFolder
    accelerator: Accelerator
    runtime: Runtime
    sharding: Sharding
    resume: Resume  # the checkpoint the run starts from (None: from scratch)
    changes: dict[str, tuple]  # allowed config changes since that checkpoint, {key: (saved, now)}
    data_info: dict  # what `prepare` recorded about the dataset
    mirror: Mirror | None  # on the main process with output.mirror, else None
    stop_request: StopRequest


def open_run(cfg: Config, held: contextlib.ExitStack) -> Session:
    """Check, make the Accelerator and take the run folder; `held` keeps the lock, the mirror and the stop
    request until the run is left."""
    t, run = cfg.train, RunFolder(cfg.output.dir)
    resume = resolve_resume(t.resume, run.root, t.fork)
    check_output(run, t, resume)
    changes = _changes_since(cfg, resume)
    data_info = read_prepare_info(cfg.data.dataset)
    _check_before_work(cfg)
    sharding = Sharding.before_accelerator(cfg)
    # `auto` settled, and a precision this CPU has no instructions for measured, before Accelerate takes it.
    precision = choose(t.mixed_precision, device_type(), "train.mixed_precision")
    accelerator = _accelerator(cfg, run, sharding, precision.precision)
    if precision.note:
        say(accelerator, precision.note)
    sharding_note = sharding.engage(accelerator)
    runtime = Runtime.of(accelerator, cfg)
    check_optimizer(t, runtime)
    mirror, fetched = _take_folder(cfg, run, resume, accelerator, held) if accelerator.is_main_process else (None, None)
    accelerator.wait_for_everyone()
    if cfg.output.mirror and t.resume == "auto":
        # The main process may have fetched a checkpoint newer than the run folder's from the mirror: every
        # process starts from it.
        [fetched] = broadcast_object_list([fetched])
        if fetched is not None:
            resume = Resume(fetched)
            changes = _changes_since(cfg, resume)
    stop_request = held.enter_context(StopRequest())
    if runtime.on_xla and cfg.model.compile:
        say(accelerator, "model.compile: off on XLA (torch_xla compiles the traced graphs itself)")
    if sharding_note:
        say(accelerator, sharding_note)
    return Session(cfg, run, accelerator, runtime, sharding, resume, changes, data_info, mirror, stop_request)


def _changes_since(cfg: Config, resume: Resume) -> dict[str, tuple]:
    """The config changes since the checkpoint the run starts from; refused here when they cannot or may not go
    on."""
    return config_changes(cfg, resume.checkpoint) if resume.checkpoint is not None else {}


def _check_before_work(cfg: Config) -> None:
    t = cfg.train
    if missing := check_run_files(cfg):
        raise ConfigError("files the config names are missing:\n  - " + "\n  - ".join(missing))
    if t.report_to in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.report_to={t.report_to} needs wandb: pip install 'dia-tpu[wandb]'")
    family = family_of(cfg.model)
    if t.push_to_hub:
        if not family.publishes:
            raise ConfigError(
                f"train.push_to_hub: {family.name} exports are not published by dia_tpu yet; upload "
                f"{cfg.output.dir}/final yourself or leave push_to_hub off"
            )
        check_token()


def _accelerator(cfg: Config, run: RunFolder, sharding: Sharding, precision: str) -> Accelerator:
    t = cfg.train
    return Accelerator(
        # Accumulation follows the optimizer-step windows the loop takes, not epoch ends: a window may span two
        # epochs, so every optimizer step sees exactly the same number of micro-batches.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=t.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        mixed_precision=precision,
        log_with=_TRACKERS[t.report_to],
        project_config=ProjectConfiguration(project_dir=str(run.root), logging_dir=str(run.logs)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        fsdp_plugin=sharding.plugin,
    )


def _take_folder(
    cfg: Config, run: RunFolder, resume: Resume, accelerator: Accelerator, held: contextlib.ExitStack
) -> tuple[Mirror | None, Path | None]:
    """On the main process: lock the run folder, start over or mark it, open the mirror and move aside what is
    not to be loaded, there and here. Returns the mirror, if any, and the checkpoint it fetched, if any."""
    t = cfg.train
    # Marks the folder as a run and proves it writable before anything loads.
    held.enter_context(FolderLock(run.root, RUN, "output.dir", "run", earlier=earlier_run))
    for line in start(run, t):
        say(accelerator, line)
    mirror, fetched = None, None
    if cfg.output.mirror:
        # Proves the mirror writable; leaving the run waits for its uploads.
        mirror = held.enter_context(Mirror(cfg.output.mirror, run, t.keep_last))
        if t.resume != "auto":
            mirror.check_fork(resume.checkpoint, t.fork)
    for line in set_aside(run, resume):
        say(accelerator, line)
    if mirror is not None:
        fetched = mirror.start(t.resume, resume.checkpoint)
    return mirror, fetched


def finish(session: Session, model, state: TrainState, stopped: int) -> None:
    """End the run: on a stop request end the trackers and raise TrainingStopped (the loop saved a checkpoint
    at this step); else export the model, send it to the mirror, end the trackers and push to the Hub."""
    accelerator, run, t = session.accelerator, session.run, session.cfg.train
    if stopped:
        accelerator.end_training()
        raise TrainingStopped(stopped, state.step, run.checkpoint(state.step))
    # Sharded weights are put together on the main process's host first: under FSDP2 every process takes part.
    gathered = whole_weights(accelerator, session.runtime, model)
    if accelerator.is_main_process:
        family_of(session.cfg.model).export(accelerator.unwrap_model(model), session.cfg, run.final, gathered)
        if session.mirror is not None:
            session.mirror.send(run.final, state.step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    say(
        accelerator,
        f"done: {state.step} steps\n  checkpoints: {run.checkpoints}\n  export:      {run.final}\n"
        f"  logs:        {run.logs}",
    )
    if t.push_to_hub and accelerator.is_main_process:
        # After every process is done: a failed upload is one line, and the export stays for `dia-tpu push`.
        say(accelerator, f"pushed {run.final} to {push_export(run.final, t.hub_model_id, t.hub_private)}")
