"""train(cfg): the whole fine-tuning run on whatever Accelerate was launched with (CPU, GPUs, TPU)."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from dia_tpu.adapters import count_parameters, is_peft, merged, setup_training, trainable_state_dict
from dia_tpu.checkpoint import (
    ADAPTER_DIR,
    BEST,
    TrainState,
    load_checkpoint,
    resolve_resume,
    save_adapter,
    save_checkpoint,
)
from dia_tpu.config import Config, ConfigError
from dia_tpu.data import BucketBatchSampler, bucket_lengths, load_splits, make_collator
from dia_tpu.evaluate import evaluate
from dia_tpu.loss import batch_loss, codebook_weights, target_weight
from dia_tpu.model import CONFIG_FILE, build_codec, build_model, codec_identity, export
from dia_tpu.samples import TrainingSamples
from dia_tpu.shards import read_prepare_info

logger = get_logger(__name__)

_TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "all": ["tensorboard", "wandb"], "none": None}
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def train(cfg: Config) -> Path:
    """Fine-tune, checkpoint, evaluate and export; returns the export directory (output.dir/final)."""
    t, run_dir = cfg.train, Path(cfg.output.dir)
    resume_from = resolve_resume(t.resume, run_dir)
    data_info = read_prepare_info(cfg.data.dataset)
    if t.report_to in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.report_to={t.report_to} needs wandb: pip install 'dia-tpu[wandb]'")
    accelerator = Accelerator(
        # Accumulation follows the optimizer-step windows built below, not epoch ends: a window may
        # span two epochs, so every optimizer step sees exactly the same number of micro-batches.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=t.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        mixed_precision=t.mixed_precision,
        log_with=_TRACKERS[t.report_to],
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    on_xla = accelerator.distributed_type == DistributedType.XLA
    if t.optimizer == "adamw_8bit" and on_xla:
        raise ConfigError("train.optimizer=adamw_8bit: bitsandbytes has no XLA (TPU) kernels; use adamw")
    if t.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.optimizer=adamw_8bit needs bitsandbytes: pip install 'dia-tpu[bnb]'")
    if on_xla and cfg.model.compile:
        _say(accelerator, "model.compile: off on XLA (torch_xla compiles the traced graphs itself)")
    set_seed(t.seed)

    with accelerator.main_process_first():
        splits = load_splits(cfg)
    model = build_trainable(cfg, on_xla)
    _check_data_matches_model(cfg, data_info, model.config)
    total, trainable = count_parameters(model)
    _say(accelerator, f"model: {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable "
                      f"({100 * trainable / total:.2f} %)")  # fmt: skip
    samples = TrainingSamples(accelerator, cfg, model.config, on_xla)
    if on_xla and cfg.samples.every and not samples.enabled:
        _say(accelerator, "samples: off on XLA (samples.on_xla=skip)")
    channels = len(model.config.delay_pattern)
    train_loader, eval_loader, epoch_seeded = _make_loaders(cfg, splits, model.config, accelerator.num_processes)
    optimizer = make_optimizer(t, model, on_xla)
    # Before `prepare` the loader counts the batches of all processes together.
    steps_per_epoch = max(1, len(train_loader) // accelerator.num_processes // t.gradient_accumulation_steps)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    # A prepared scheduler advances once per process at each optimizer step.
    scheduler = get_scheduler(
        _SCHEDULERS[t.lr_scheduler],
        optimizer,
        num_warmup_steps=t.warmup_steps * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    adapter_only = is_peft(accelerator.unwrap_model(model))
    if adapter_only:
        # A LoRA run's checkpoints hold the trained weights only; the base is rebuilt from the config.
        accelerator.register_save_state_pre_hook(_keep_trainable)
    if resume_from is not None:
        load_checkpoint(accelerator, resume_from, trained_only=model if adapter_only else None)
        logger.info(f"resumed from {resume_from} at step {state.step}", main_process_only=True)
    elif t.resume == "auto":
        logger.info(f"no checkpoint under {run_dir}: starting from step 0", main_process_only=True)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
    accelerator.init_trackers(run_dir.name, config=_flat_hparams(cfg))
    _report_data(accelerator, splits, total_steps)

    weights = codebook_weights(t.codebook_weights, channels).to(accelerator.device)
    stream = _micro_batches(accelerator, train_loader, epoch_seeded, state)
    bar = tqdm(total=total_steps, initial=state.step, desc="train", disable=not accelerator.is_main_process)
    window = torch.zeros(3, device=accelerator.device)  # weighted CE sum, target weight, audio frames since last log
    grad_norm = torch.zeros((), device=accelerator.device)
    window_start = time.perf_counter()
    xla = None
    if on_xla:
        from dia_tpu.xla import XlaWatch

        xla = XlaWatch()
    model.train()
    while state.step < total_steps:
        if xla is not None:
            xla.step_begins()
        batches = [next(stream) for _ in range(t.gradient_accumulation_steps)]
        totals, norm = train_step(accelerator, model, optimizer, scheduler, batches, weights, t.max_grad_norm)
        window += totals
        if norm is not None:
            grad_norm = norm
        if xla is not None:
            xla.step_ends()
        state.step += 1
        bar.update(1)
        last = state.step == total_steps
        logged = state.step % t.log_every == 0 or last
        if logged:
            _log_train(accelerator, window, time.perf_counter() - window_start, scheduler, grad_norm, state, xla, bar)
            window.zero_()
            window_start = time.perf_counter()
        stop = False
        if eval_loader is not None and ((cfg.eval.eval_every and state.step % cfg.eval.eval_every == 0) or last):
            metrics = evaluate(accelerator, model, eval_loader, weights)
            accelerator.log(metrics, step=state.step)
            # The metrics are gathered, so every process takes the same decisions here.
            improved = state.record_eval(metrics["eval/loss"], cfg.eval.early_stopping_min_delta)
            _say(accelerator, _eval_line(state, metrics, channels))
            if improved and cfg.eval.keep_best:
                save_checkpoint(accelerator, model, cfg, state.step, folder=run_dir / BEST)
            patience = cfg.eval.early_stopping_patience
            stop = bool(patience) and state.evals_since_best >= patience and not last
            if stop:
                _say(accelerator, f"early stop at step {state.step}: no eval-loss improvement in {patience} "
                                  f"evaluations (best {state.best_loss:.4f} at step {state.best_step})")
                if not logged:
                    _log_train(accelerator, window, time.perf_counter() - window_start, scheduler, grad_norm, state,
                               xla, bar)
        if state.step % t.save_every == 0 or last or stop:
            path = save_checkpoint(accelerator, model, cfg, state.step)
            logger.info(f"saved checkpoint {path}", main_process_only=True)
        if samples.due(state.step, last or stop):
            folder = samples.write(model, state.step)
            if folder is not None:
                logger.info(f"wrote samples {folder}", main_process_only=True)
        if stop:
            break
    bar.close()

    final = run_dir / "final"
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        if adapter_only:
            save_adapter(trained, final / ADAPTER_DIR)
        export(merged(trained), build_codec(cfg.model), cfg, final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    _say(
        accelerator,
        f"done: {state.step} steps\n  checkpoints: {run_dir / 'checkpoints'}\n  export:      {final}\n"
        f"  logs:        {run_dir / 'logs'}",
    )
    return final


def build_trainable(cfg: Config, on_xla: bool) -> torch.nn.Module:
    """The model set up for training: weights loaded, no generation cache, optional non-reentrant
    checkpointing, frozen parts and LoRA adapters, then (off XLA) compiled in place.

    `Module.compile` compiles the forward without wrapping the module, so state-dict names stay the
    model's own (no `_orig_mod.` prefixes in checkpoints). XLA traces and compiles graphs itself.
    """
    model = set_up_for_training(build_model(cfg.model, on_xla), cfg)
    if cfg.model.compile and not on_xla:
        model.compile()
    return model


def set_up_for_training(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """No generation cache, optional non-reentrant checkpointing, frozen parts and LoRA adapters (`dia-tpu
    plan` sets up its meta-device model with this too)."""
    model.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return setup_training(model, cfg.model)


def train_step(
    accelerator: Accelerator, model, optimizer, scheduler, batches: list[dict], weights: torch.Tensor,
    max_grad_norm: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over its micro-batches, shared by training and the benchmark.

    The loss is normalised by the target weight of the whole step on all processes, so k micro-batches of
    B equal one batch of kB. Returns this process's [weighted CE sum, target weight, audio frames] for the
    step, and the gradient norm before clipping (None when clipping is off).
    """
    denominator = sum(target_weight(b["labels"], weights) for b in batches)
    if accelerator.num_processes > 1:
        # On XLA the reduction cuts the graph (a second, small execution per step): only when it matters.
        denominator = accelerator.reduce(denominator, "sum")
    # backward() divides by the accumulation steps and DDP averages over processes; undo both so the
    # step's gradient is that of (all weighted CE of the step) / (all target weight).
    scale = accelerator.gradient_accumulation_steps * accelerator.num_processes
    totals, grad_norm = [], None
    for batch in batches:
        with accelerator.accumulate(model):
            parts = batch_loss(model, batch, weights)
            accelerator.backward(parts.weighted_sum / denominator * scale)
            if accelerator.sync_gradients and max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad()
        totals.append(
            torch.stack([parts.weighted_sum.detach(), (parts.count * weights).sum(), parts.count[:, 0].sum()])
        )
    return torch.stack(totals).sum(0), grad_norm


def _make_loaders(cfg: Config, splits, model_config, num_processes: int) -> tuple[DataLoader, DataLoader | None, list]:
    """Fixed-shape loaders: training drops its last partial batch (per length bucket with data.buckets),
    evaluation pads to max_audio_frames and fills its last batch with ignored rows. Also returns what
    `_micro_batches` sets the epoch of: the training dataset, and the bucket batch sampler if any."""
    d, batch_size = cfg.data, cfg.train.batch_size
    collate = make_collator(d, model_config, bucketed=True)
    if d.buckets:
        lengths = bucket_lengths(d.buckets, d.max_audio_frames)
        sampler = BucketBatchSampler(splits.train.frames(), lengths, batch_size, d.seed, num_processes)
        train_loader = DataLoader(splits.train, batch_sampler=sampler, collate_fn=collate, num_workers=d.num_workers)
        epoch_seeded = [splits.train, sampler]
        within = f" within one of the lengths {lengths} (data.buckets)"
    else:
        train_loader = DataLoader(
            splits.train, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate,
            num_workers=d.num_workers,
        )  # fmt: skip
        epoch_seeded = [splits.train]
        within = ""
    if len(train_loader) < num_processes:
        raise ValueError(
            f"{d.dataset}: {len(splits.train)} training items make no full batch of {batch_size}{within} "
            f"on each of {num_processes} processes"
        )
    if splits.eval is None:
        return train_loader, None, epoch_seeded
    eval_loader = DataLoader(
        splits.eval,
        batch_size=cfg.eval.batch_size,
        collate_fn=make_collator(d, model_config, fill_to=cfg.eval.batch_size),
        num_workers=d.num_workers,
    )
    return train_loader, eval_loader, epoch_seeded


def _micro_batches(accelerator: Accelerator, loader, epoch_seeded: list, state: TrainState) -> Iterator[dict]:
    """Endless micro-batches in seeded epoch order, starting where `state` says (after a resume, mid-epoch).

    The dataset and the bucket sampler get the epoch here rather than through `loader.set_epoch`: on several
    processes Accelerate wraps a custom batch sampler in a BatchSamplerShard, which that call does not reach.
    """
    while True:
        loader.set_epoch(state.epoch)
        for part in epoch_seeded:
            part.set_epoch(state.epoch)
        skip = state.batches_in_epoch
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            state.batches_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batches_in_epoch = 0


def make_optimizer(t, model: torch.nn.Module, on_xla: bool = False) -> torch.optim.Optimizer:
    """AdamW from torch (its fused kernel unless on XLA or turned off), or bitsandbytes' 8-bit AdamW
    (imported only when asked for; checked at the start). Only trainable parameters are given to it."""
    groups = _param_groups(model, t.weight_decay)
    kwargs = {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs, fused=t.fused_optimizer and not on_xla)
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(groups, **kwargs)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (vectors); decay on matrices and embeddings."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _keep_trainable(models: list, weights: list, output_dir: str) -> None:
    """Accelerate save hook: keep only the trained weights (adapters, modules_to_save) of each model."""
    for i, model in enumerate(models):
        weights[i] = trainable_state_dict(model, weights[i])


def _check_data_matches_model(cfg: Config, info: dict, model_config) -> None:
    problems = []
    expected = codec_identity(cfg.model)
    if info["codec"] != expected:
        problems.append(f"{cfg.data.dataset} was encoded with codec {info['codec']}, but model.codec is {expected}")
    channels = len(model_config.delay_pattern)
    if info["num_codebooks"] != channels:
        problems.append(f"{cfg.data.dataset} has {info['num_codebooks']} codebooks but the model has {channels}")
    if problems:
        raise ConfigError("prepared data does not match the model:\n  - " + "\n  - ".join(problems))


def _log_train(accelerator: Accelerator, window, elapsed: float, scheduler, grad_norm, state, xla, bar) -> None:
    """Log the training window since the last log: loss, learning rate, gradient norm, throughput."""
    loss_sum, weight_sum, frames = accelerator.reduce(window, "sum").tolist()
    metrics = {
        "train/loss": loss_sum / max(weight_sum, 1.0),
        "train/lr": scheduler.get_last_lr()[0],
        "train/grad_norm": float(grad_norm),
        "train/frames_per_s": frames / elapsed,
        "train/epoch": state.epoch,
        **(xla.metrics() if xla is not None else {}),
    }
    accelerator.log(metrics, step=state.step)
    bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.2e}",
                    fps=f"{metrics['train/frames_per_s']:.0f}")


def _eval_line(state: TrainState, metrics: dict, channels: int) -> str:
    losses = " ".join(f"{metrics[f'eval/loss_cb{c}']:.2f}" for c in range(channels))
    accuracy = " ".join(f"{metrics[f'eval/acc_cb{c}']:.2f}" for c in range(channels))
    return (
        f"step {state.step}: eval loss {metrics['eval/loss']:.4f} (best {state.best_loss:.4f} at step "
        f"{state.best_step})\n  loss per codebook: {losses}\n  accuracy per codebook: {accuracy}"
    )


def _say(accelerator: Accelerator, message: str) -> None:
    """Print on the main process. Not `accelerator.print`: on XLA, Accelerate 1.15 reports local process
    index -1 unless LOCAL_RANK is set (the TPU launcher does not set it), so that prints nothing."""
    if accelerator.is_main_process:
        print(message, flush=True)


def _report_data(accelerator: Accelerator, splits, total_steps: int) -> None:
    eval_items = 0 if splits.eval is None else len(splits.eval)
    _say(
        accelerator,
        f"data: {len(splits.train)} training items, {eval_items} eval items; "
        f"{splits.cropped} cropped to data.max_audio_frames, {splits.skipped_long_text} skipped for long text; "
        f"{total_steps} optimizer steps on {accelerator.num_processes} process(es)",
    )


def _flat_hparams(cfg: Config) -> dict:
    """The config as flat scalars, which is what trackers' hyper-parameter tables accept."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            ok = isinstance(value, (int, float, str, bool))
            flat[f"{section}.{key}"] = value if ok else str(value)
    return flat
