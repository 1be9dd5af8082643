"""train(cfg): the whole fine-tuning run on whatever Accelerate was launched with (CPU, GPUs, TPU)."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from dia_tpu.artifacts import RunFolder
from dia_tpu.artifacts.lock import FolderLock
from dia_tpu.artifacts.owner import RUN
from dia_tpu.config import Config, ConfigError, check_run_files
from dia_tpu.console import TrainingStopped
from dia_tpu.data.check import data_model_problems
from dia_tpu.data.dataset import load_splits
from dia_tpu.data.shards import read_prepare_info
from dia_tpu.export import export
from dia_tpu.model.adapters import count_parameters, is_peft
from dia_tpu.model.build import plain_model
from dia_tpu.model.codec import build_codec
from dia_tpu.publish import check_token, push_export
from dia_tpu.training.audio_eval import AudioEvaluation, selection_score
from dia_tpu.training.checkpoint import TrainState, keep_trainable, load_checkpoint, save_checkpoint
from dia_tpu.training.evaluate import evaluate
from dia_tpu.training.loaders import make_loaders, micro_batches
from dia_tpu.training.loss import codebook_weights
from dia_tpu.training.meter import TrainMeter, eval_line, flat_hparams, log_train, report_data, say, start_line
from dia_tpu.training.mirror import Mirror
from dia_tpu.training.output import check_output, earlier_run, start
from dia_tpu.training.resume import apply_changes, config_changes, record_changes, resolve_resume, set_aside
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.samples import TrainingSamples
from dia_tpu.training.schedule import make_scheduler
from dia_tpu.training.sharding import Sharding, whole_weights
from dia_tpu.training.step import build_trainable, check_optimizer, make_optimizer, train_step
from dia_tpu.training.stop import StopRequest

logger = get_logger(__name__)

_TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "all": ["tensorboard", "wandb"], "none": None}


def train(cfg: Config) -> Path:
    """Fine-tune, checkpoint, evaluate and export; returns the export directory (output.dir/final)."""
    t, run = cfg.train, RunFolder(cfg.output.dir)
    resume = resolve_resume(t.resume, run.root, t.fork)
    check_output(run, t, resume)
    changes = config_changes(cfg, resume.checkpoint) if resume.checkpoint is not None else {}
    data_info = read_prepare_info(cfg.data.dataset)
    if missing := check_run_files(cfg):
        raise ConfigError("files the config names are missing:\n  - " + "\n  - ".join(missing))
    if t.report_to in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.report_to={t.report_to} needs wandb: pip install 'dia-tpu[wandb]'")
    if t.push_to_hub:
        check_token()
    sharding = Sharding.before_accelerator(cfg)
    accelerator = Accelerator(
        # Accumulation follows the optimizer-step windows built below, not epoch ends: a window may
        # span two epochs, so every optimizer step sees exactly the same number of micro-batches.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=t.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        mixed_precision=t.mixed_precision,
        log_with=_TRACKERS[t.report_to],
        project_config=ProjectConfiguration(project_dir=str(run.root), logging_dir=str(run.logs)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        fsdp_plugin=sharding.plugin,
    )
    sharding_note = sharding.engage(accelerator)
    runtime = Runtime.of(accelerator, cfg)
    check_optimizer(t, runtime)
    with contextlib.ExitStack() as held:
        mirror = None
        if accelerator.is_main_process:
            # Marks the folder as a run and proves it writable before anything loads.
            held.enter_context(FolderLock(run.root, RUN, "output.dir", "run", earlier=earlier_run))
            for line in start(run, t):
                say(accelerator, line)
            if cfg.output.mirror:
                # Proves the mirror writable; leaving the run waits for its uploads.
                mirror = held.enter_context(Mirror(cfg.output.mirror, run, t.keep_last))
                if t.resume != "auto":
                    mirror.check_fork(resume.checkpoint, t.fork)
            for line in set_aside(run, resume):
                say(accelerator, line)
            if mirror is not None:
                mirror.start(t.resume, resume.checkpoint)
        accelerator.wait_for_everyone()
        if cfg.output.mirror and t.resume == "auto":
            # The mirror may have brought a newer checkpoint: every process resumes from it.
            resume = resolve_resume(t.resume, run.root)
            changes = config_changes(cfg, resume.checkpoint) if resume.checkpoint is not None else {}
        stop_request = held.enter_context(StopRequest())
        if runtime.on_xla and cfg.model.compile:
            say(accelerator, "model.compile: off on XLA (torch_xla compiles the traced graphs itself)")
        if sharding_note:
            say(accelerator, sharding_note)
        set_seed(t.seed)

        with accelerator.main_process_first():
            splits = load_splits(cfg)
        model = build_trainable(cfg, runtime)
        if problems := data_model_problems(cfg, data_info, model.config):
            raise ConfigError("prepared data does not match the model:\n  - " + "\n  - ".join(problems))
        total, trainable = count_parameters(model)
        say(
            accelerator,
            f"model: {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable "
            f"({100 * trainable / total:.2f} %)",
        )
        samples = TrainingSamples(accelerator, runtime, cfg, model.config)
        audio = AudioEvaluation(accelerator, runtime, cfg, splits, model.config)
        if runtime.on_xla and cfg.samples.every and not samples.enabled:
            say(accelerator, "samples: off on XLA (samples.on_xla=skip)")
        channels = len(model.config.delay_pattern)
        train_loader, eval_loader, epoch_seeded = make_loaders(cfg, splits, model.config, accelerator.num_processes)
        optimizer = make_optimizer(t, model, runtime)
        # Before `prepare` the loader counts the batches of all processes together.
        steps_per_epoch = max(1, len(train_loader) // accelerator.num_processes // t.gradient_accumulation_steps)
        total_steps = t.max_steps or t.epochs * steps_per_epoch
        # A prepared scheduler advances once per process at each optimizer step.
        n = accelerator.num_processes
        scheduler = make_scheduler(t.lr_scheduler, optimizer, t.warmup_steps * n, total_steps * n)
        sharding.before_prepare(model)
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
        if eval_loader is not None:
            eval_loader = accelerator.prepare(eval_loader)
        if line := sharding.after_prepare(cfg, model, [train_loader, eval_loader]):
            say(accelerator, line)

        state = TrainState()
        adapter_only = is_peft(accelerator.unwrap_model(model))
        if adapter_only:
            # A LoRA run's checkpoints hold the trained weights only; the base is rebuilt from the config.
            accelerator.register_save_state_pre_hook(keep_trainable)
        if resume.checkpoint is not None:
            trained_only = model if adapter_only else None
            load_checkpoint(accelerator, runtime, resume.checkpoint, state, trained_only=trained_only)
            sharding.after_resume(optimizer)
            if changes:
                apply_changes(changes, cfg, optimizer, scheduler, state)
                if accelerator.is_main_process:
                    record_changes(run, state.step, changes)
                say(
                    accelerator,
                    "resume: going on with " + ", ".join(f"{k}={b!r} (was {a!r})" for k, (a, b) in changes.items()),
                )
            logger.info(f"resumed from {resume.checkpoint} at step {state.step}", main_process_only=True)
        elif t.resume == "auto":
            logger.info(f"no checkpoint under {run.root}: starting from step 0", main_process_only=True)
        if accelerator.is_main_process:
            cfg.save(run.config)  # the lock made the folder
        accelerator.init_trackers(run.root.name, config=flat_hparams(cfg))
        report_data(accelerator, splits, total_steps)

        weights = codebook_weights(t.codebook_weights, channels).to(accelerator.device)
        stream = micro_batches(accelerator, train_loader, epoch_seeded, state)
        bar = tqdm(total=total_steps, initial=state.step, desc="train", disable=not accelerator.is_main_process)
        meter = TrainMeter(accelerator.device)
        xla = None
        if runtime.on_xla:
            from dia_tpu.training.xla import XlaWatch

            xla = XlaWatch()
        if cfg.eval.eval_on_start and eval_loader is not None and state.step == 0:
            metrics = evaluate(accelerator, model, eval_loader, weights)
            accelerator.log(metrics, step=0)
            say(accelerator, start_line(metrics))
        model.train()
        stopped = 0
        while state.step < total_steps:
            if xla is not None:
                xla.step_begins()
            batches = [next(stream) for _ in range(t.gradient_accumulation_steps)]
            meter.add(*train_step(accelerator, model, optimizer, scheduler, batches, weights, t.max_grad_norm))
            if xla is not None:
                xla.step_ends()
            state.step += 1
            bar.update(1)
            last = state.step == total_steps
            logged = state.step % t.log_every == 0 or last
            if logged:
                log_train(accelerator, meter, scheduler, state, xla, bar)
            early = False
            if eval_loader is not None and ((cfg.eval.eval_every and state.step % cfg.eval.eval_every == 0) or last):
                if xla is not None:
                    xla.cut()  # where a step's graph always ends, or the first eval batch would extend it
                metrics = evaluate(accelerator, model, eval_loader, weights)
                if audio.due(state.step, last):
                    metrics |= audio.run(model, state.step)
                accelerator.log(metrics, step=state.step)
                # The metrics are gathered, so every process takes the same decisions here.
                score = selection_score(cfg.eval.select_by, metrics)
                improved = state.record_eval(score, cfg.eval.early_stopping_min_delta)
                say(accelerator, eval_line(state, metrics, channels, cfg.eval.select_by))
                if improved and cfg.eval.keep_best:
                    save_checkpoint(accelerator, runtime, model, cfg, state, folder=run.best)
                    if mirror is not None:
                        mirror.send(run.best, state.step)
                patience = cfg.eval.early_stopping_patience
                early = bool(patience) and state.evals_since_best >= patience and not last
                if early:
                    say(
                        accelerator,
                        f"early stop at step {state.step}: no {_score_name(cfg)} improvement in "
                        f"{patience} evaluations (best {state.best_score:.4f} at step "
                        f"{state.best_step})",
                    )
                    if not logged:
                        log_train(accelerator, meter, scheduler, state, xla, bar)
            # With several processes agreeing is a collective and a host sync: it rides on the logging steps,
            # which sync anyway, so no train step waits for it.
            stopped = 0 if last else stop_request.agreed(accelerator, check=logged)
            if state.step % t.save_every == 0 or last or early or stopped:
                path = save_checkpoint(accelerator, runtime, model, cfg, state)
                logger.info(f"saved checkpoint {path}", main_process_only=True)
                if mirror is not None:
                    mirror.send(path, state.step)
            if samples.due(state.step, last or early) and not stopped:
                folder = samples.write(model, state.step)
                if folder is not None:
                    logger.info(f"wrote samples {folder}", main_process_only=True)
            if early or stopped:
                break
        bar.close()
        if stopped:
            accelerator.end_training()
            raise TrainingStopped(stopped, state.step, run.checkpoint(state.step))  # saved just above

        # Sharded weights are put together on the main process's host first: under FSDP2 every process takes part.
        gathered = whole_weights(accelerator, runtime, model)
        if accelerator.is_main_process:
            final = accelerator.unwrap_model(model)
            if gathered is not None:
                final = plain_model(final.config, gathered, final.generation_config)
            export(final, build_codec(cfg.model), cfg, run.final)
            if mirror is not None:
                mirror.send(run.final, state.step)
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
    return run.final


def _score_name(cfg: Config) -> str:
    return "eval-loss" if cfg.eval.select_by == "loss" else f"eval.select_by ({cfg.eval.select_by})"
