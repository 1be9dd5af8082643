"""train(cfg): the whole fine-tuning run on whatever Accelerate was launched with (CPU, GPUs, TPU).

A run goes through four phases: open the run (`session.open_run`), set up (`setup.set_up`, `restore`,
`start_tracking`), the loop (here), and finish (`session.finish`). The loop is the one place that shows the order
of events within a step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from accelerate.logging import get_logger
from tqdm.auto import tqdm

from dia_tpu.config import Config, unguided_warning
from dia_tpu.evaluation.selection import selection_score
from dia_tpu.training.checkpoint import save_checkpoint
from dia_tpu.training.evaluate import evaluate
from dia_tpu.training.loaders import positioned_batches
from dia_tpu.training.meter import TrainMeter, eval_line, log_train, say, start_line
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.session import Session, finish, open_run
from dia_tpu.training.setup import Setup, restore, set_up, start_tracking
from dia_tpu.training.state import TrainState
from dia_tpu.training.step import train_step

logger = get_logger(__name__)


def train(cfg: Config) -> Path:
    """Fine-tune, checkpoint, evaluate and export; returns the export directory (output.dir/final)."""
    with contextlib.ExitStack() as held:
        session = open_run(cfg, held)
        built = set_up(session)
        if note := unguided_warning("this run's config", cfg.samples.guidance_scale, cfg.train.unconditional_frac):
            say(session.accelerator, note)
        state = restore(session, built)
        start_tracking(session, built)
        stopped = train_loop(session, built, state)
        finish(session, built.model, state, stopped)
    return session.run.final


def train_loop(session: Session, built: Setup, state: TrainState) -> int:
    """Train from `state` to the run's last step, or until early stopping or a stop request; returns the stop
    request's signal number (0 when none stopped it)."""
    cfg, t, accelerator = session.cfg, session.cfg.train, session.accelerator
    model, optimizer, scheduler = built.model, built.optimizer, built.scheduler
    stream = positioned_batches(accelerator, built.train_loader, built.epoch_seeded, state)
    bar = tqdm(total=built.total_steps, initial=state.step, desc="train", disable=not accelerator.is_main_process)
    meter, xla = TrainMeter(accelerator.device), _xla_watch(session.runtime)
    if cfg.eval.eval_on_start and built.eval_loader is not None and state.step == 0:
        _evaluate_on_start(accelerator, built)
    model.train()
    stopped = 0
    while state.step < built.total_steps:
        if xla is not None:
            xla.step_begins()
        taken = [next(stream) for _ in range(t.gradient_accumulation_steps)]
        state.epoch, state.batches_in_epoch = taken[-1][0]  # the data position after this step's batches
        batches = [batch for _, batch in taken]
        meter.add(*train_step(accelerator, model, optimizer, scheduler, batches, built.scorer, t.max_grad_norm))
        if xla is not None:
            xla.step_ends()
        state.step += 1
        bar.update(1)
        last = state.step == built.total_steps
        logged = state.step % t.log_every == 0 or last
        if logged:
            log_train(accelerator, meter, scheduler, state, xla, bar)
        early = _eval_due(cfg, built, state, last) and _evaluate_and_select(session, built, state, xla, last)
        if early and not logged:
            log_train(accelerator, meter, scheduler, state, xla, bar)
        # With several processes agreeing is a collective and a host sync: it rides on the logging steps,
        # which sync anyway, so no train step waits for it.
        stopped = 0 if last else session.stop_request.agreed(accelerator, check=logged)
        if state.step % t.save_every == 0 or last or early or stopped:
            _save(session, built, state)
        if built.samples.due(state.step, last or early) and not stopped:
            _write_samples(built, state)
        if early or stopped:
            break
    bar.close()
    return stopped


def _xla_watch(runtime: Runtime):
    if not runtime.on_xla:
        return None
    from dia_tpu.training.xla import XlaWatch

    return XlaWatch()


def _evaluate_on_start(accelerator, built: Setup) -> None:
    metrics = evaluate(accelerator, built.model, built.eval_loader, built.scorer)
    accelerator.log(metrics, step=0)
    say(accelerator, start_line(metrics))


def _eval_due(cfg: Config, built: Setup, state: TrainState, last: bool) -> bool:
    every = cfg.eval.eval_every
    return built.eval_loader is not None and ((every and state.step % every == 0) or last)


def _evaluate_and_select(session: Session, built: Setup, state: TrainState, xla, last: bool) -> bool:
    """Evaluate, keep a new best checkpoint, and decide on early stopping: True when training stops here."""
    cfg, accelerator = session.cfg, session.accelerator
    if xla is not None:
        xla.cut()  # where a step's graph always ends, or the first eval batch would extend it
    metrics = evaluate(accelerator, built.model, built.eval_loader, built.scorer)
    if built.audio.due(state.step, last):
        metrics |= built.audio.run(built.model, state.step)
    accelerator.log(metrics, step=state.step)
    # The metrics are gathered, so every process takes the same decisions here.
    score = selection_score(cfg.eval.select_by, metrics)
    improved = state.record_eval(score, cfg.eval.early_stopping_min_delta)
    say(accelerator, eval_line(state, metrics, built.scorer.heads, cfg.eval.select_by))
    if improved and cfg.eval.keep_best:
        save_checkpoint(accelerator, session.runtime, built.model, cfg, state, folder=session.run.best)
        if session.mirror is not None:
            session.mirror.send(session.run.best, state.step)
    patience = cfg.eval.early_stopping_patience
    early = bool(patience) and state.evals_since_best >= patience and not last
    if early:
        say(
            accelerator,
            f"early stop at step {state.step}: no {_score_name(cfg)} improvement in "
            f"{patience} evaluations (best {state.best_score:.4f} at step "
            f"{state.best_step})",
        )
    return early


def _save(session: Session, built: Setup, state: TrainState) -> None:
    path = save_checkpoint(session.accelerator, session.runtime, built.model, session.cfg, state)
    logger.info(f"saved checkpoint {path}", main_process_only=True)
    if session.mirror is not None:
        session.mirror.send(path, state.step)


def _write_samples(built: Setup, state: TrainState) -> None:
    folder = built.samples.write(built.model, state.step)
    if folder is not None:
        logger.info(f"wrote samples {folder}", main_process_only=True)


def _score_name(cfg: Config) -> str:
    return "eval-loss" if cfg.eval.select_by == "loss" else f"eval.select_by ({cfg.eval.select_by})"
