"""Set-up of an open run: the data, the model, the optimizer and its schedule, all through `accelerator.prepare`;
the training state restored from the checkpoint the run starts from; the run's config and trackers started."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from dia_tpu.config import ConfigError
from dia_tpu.data.dataset import load_splits
from dia_tpu.families import Family, family_of
from dia_tpu.families.heads import Scorer
from dia_tpu.model.adapters import count_parameters, is_peft
from dia_tpu.training.audio_eval import AudioEvaluation
from dia_tpu.training.checkpoint import keep_trainable, load_checkpoint
from dia_tpu.training.loaders import make_loaders
from dia_tpu.training.meter import flat_hparams, report_data, say
from dia_tpu.training.resume import apply_changes, record_changes
from dia_tpu.training.samples import TrainingSamples
from dia_tpu.training.schedule import make_scheduler
from dia_tpu.training.session import Session
from dia_tpu.training.state import TrainState
from dia_tpu.training.step import build_trainable, make_optimizer

logger = get_logger(__name__)


@dataclass
class Setup:
    """What set-up built for the loop; the model, optimizer, scheduler and loaders as `prepare` returned them."""

    splits: object  # the run's train and eval splits (`load_splits`)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    eval_loader: DataLoader | None
    epoch_seeded: list  # what takes each epoch's seed beside the loader (the dataset, a bucket sampler)
    total_steps: int  # optimizer steps of the whole run
    scorer: Scorer  # the family's loss, its weights on the device
    samples: TrainingSamples
    audio: AudioEvaluation


def set_up(session: Session) -> Setup:
    """Seed, load the data, build the model and what trains it, and prepare them with Accelerate."""
    cfg, accelerator, runtime = session.cfg, session.accelerator, session.runtime
    set_seed(cfg.train.seed)
    family = family_of(cfg.model)
    model = build_model(session, family)
    with accelerator.main_process_first():
        splits = load_splits(cfg, lambda table, train: family.items(table, cfg, model, train=train), family.byte_text)
    samples, audio = _judging(session, family, splits, model)
    collators = family.collator(cfg.data, model, bucketed=True), family.collator(cfg.data, model, cfg.eval.batch_size)
    train_loader, eval_loader, epoch_seeded = make_loaders(cfg, splits, collators, accelerator.num_processes)
    scorer = family.scorer(cfg.train, model).to(accelerator.device)
    optimizer = make_optimizer(cfg.train, model, runtime)
    scheduler, total_steps = make_schedule(session, optimizer, train_loader)
    session.sharding.before_prepare(cfg, model)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if line := session.sharding.after_prepare(cfg, model, [train_loader, eval_loader]):
        say(accelerator, line)
    return Setup(
        splits=splits,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        eval_loader=eval_loader,
        epoch_seeded=epoch_seeded,
        total_steps=total_steps,
        scorer=scorer,
        samples=samples,
        audio=audio,
    )


def _judging(session: Session, family: Family, splits, model) -> tuple[TrainingSamples, AudioEvaluation]:
    """Training's samples and audio evaluation, speaking as the model's family speaks."""
    cfg, accelerator, runtime = session.cfg, session.accelerator, session.runtime
    samples = TrainingSamples(accelerator, runtime, cfg, family.name, model.config)
    if runtime.on_xla and cfg.samples.every and not samples.enabled:
        say(accelerator, "samples: off on XLA (samples.on_xla=skip)")
    return samples, AudioEvaluation(accelerator, runtime, cfg, splits, family.name, model.config)


def build_model(session: Session, family: Family) -> torch.nn.Module:
    """The model to train, checked against the prepared data; its size is reported."""
    model = build_trainable(session.cfg, session.runtime)
    if problems := family.data_problems(session.cfg, session.data_info, model):
        raise ConfigError("prepared data does not match the model:\n  - " + "\n  - ".join(problems))
    total, trainable = count_parameters(model)
    say(
        session.accelerator,
        f"model: {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable ({100 * trainable / total:.2f} %)",
    )
    return model


def make_schedule(session: Session, optimizer, train_loader: DataLoader) -> tuple[object, int]:
    """The learning-rate schedule, before `prepare`, and the run's length in optimizer steps."""
    t, n = session.cfg.train, session.accelerator.num_processes
    # Before `prepare` the loader counts the batches of all processes together.
    steps_per_epoch = max(1, len(train_loader) // n // t.gradient_accumulation_steps)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    # A prepared scheduler advances once per process at each optimizer step.
    return make_scheduler(t.lr_scheduler, optimizer, t.warmup_steps * n, total_steps * n), total_steps


def restore(session: Session, built: Setup) -> TrainState:
    """The training state to start from: the checkpoint's (model, optimizer, schedule and RNG restored with it,
    and the allowed config changes applied), or a fresh one."""
    accelerator, resume, t = session.accelerator, session.resume, session.cfg.train
    adapter_only = is_peft(accelerator.unwrap_model(built.model))
    if adapter_only:
        # A LoRA run's checkpoints hold the trained weights only; the base is rebuilt from the config.
        accelerator.register_save_state_pre_hook(keep_trainable)
    if resume.checkpoint is None:
        if t.resume == "auto":
            logger.info(f"no checkpoint under {session.run.root}: starting from step 0", main_process_only=True)
        return TrainState()
    trained_only = built.model if adapter_only else None
    state = load_checkpoint(accelerator, session.runtime, resume.checkpoint, trained_only=trained_only)
    session.sharding.after_resume(built.optimizer)
    if session.changes:
        _go_on_with_changes(session, built, state)
    logger.info(f"resumed from {resume.checkpoint} at step {state.step}", main_process_only=True)
    return state


def _go_on_with_changes(session: Session, built: Setup, state: TrainState) -> None:
    changes, accelerator = session.changes, session.accelerator
    apply_changes(changes, session.cfg, built.optimizer, built.scheduler, state)
    if accelerator.is_main_process:
        record_changes(session.run, state.step, changes)
    say(
        accelerator,
        "resume: going on with " + ", ".join(f"{k}={b!r} (was {a!r})" for k, (a, b) in changes.items()),
    )


def start_tracking(session: Session, built: Setup) -> None:
    """Save the run's config, start the trackers and report the data."""
    cfg, accelerator = session.cfg, session.accelerator
    if accelerator.is_main_process:
        cfg.save(session.run.config)  # the lock made the folder
    accelerator.init_trackers(session.run.root.name, config=flat_hparams(cfg))
    report_data(accelerator, built.splits, built.total_steps)
