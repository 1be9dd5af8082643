"""What training reports: the window of steps since the last log (its sums, start time and the last gradient
norm) turned into tracker metrics, and the lines printed on the main process."""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from dia_tpu.config import Config, redact_tree
from dia_tpu.evaluation.judge import AUDIO_FIGURES
from dia_tpu.training.state import TrainState


class TrainMeter:
    """The training window since the last log, kept on the device so steps never wait on it: the weighted CE
    sum, the target weight and the audio frames of its steps, when it started, and the last gradient norm."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.start = time.perf_counter()

    def add(self, totals: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """One step's [weighted CE sum, target weight, audio frames] and its gradient norm (None: not clipped)."""
        self.sums += totals
        if grad_norm is not None:
            self.grad_norm = grad_norm

    def take(self, accelerator: Accelerator) -> dict[str, float]:
        """The window's metrics over all processes (a collective: call it on every process); starts a new one."""
        loss_sum, weight_sum, frames = accelerator.reduce(self.sums, "sum").tolist()
        metrics = {
            "train/loss": loss_sum / max(weight_sum, 1.0),
            "train/grad_norm": float(self.grad_norm),
            "train/frames_per_s": frames / (time.perf_counter() - self.start),
        }
        self.sums.zero_()
        self.start = time.perf_counter()
        return metrics


def log_train(accelerator: Accelerator, meter: TrainMeter, scheduler, state: TrainState, xla, bar) -> None:
    """Log the training window: loss, learning rate, gradient norm, throughput (and XLA's counters there).

    On XLA the step's graph is cut first, where every step's is cut (at the next batch), so a logging step runs
    the one compiled train step; the zeroed window is then made data, so the next step's graph is that one too.
    """
    if xla is not None:
        xla.cut()
    metrics = {
        **meter.take(accelerator),
        "train/lr": scheduler.get_last_lr()[0],
        "train/epoch": state.epoch,
        **(xla.metrics() if xla is not None else {}),
    }
    if xla is not None:
        xla.cut()
    accelerator.log(metrics, step=state.step)
    bar.set_postfix(
        loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.2e}", fps=f"{metrics['train/frames_per_s']:.0f}"
    )


def eval_line(state: TrainState, metrics: dict, heads: tuple[str, ...], select_by: str = "loss") -> str:
    """The evaluation's lines: the loss against the best, then each head's loss and accuracy (heads other than
    codebooks, Dia2's action, are named)."""
    losses = " ".join(f"{metrics[f'eval/loss_{h}']:.2f}" for h in heads)
    accuracy = " ".join(f"{metrics[f'eval/acc_{h}']:.2f}" for h in heads)
    per = "codebook" if all(h.startswith("cb") for h in heads) else f"head ({' '.join(heads)})"
    best = "best" if select_by == "loss" else f"best {select_by}"
    line = (
        f"step {state.step}: eval loss {metrics['eval/loss']:.4f} ({best} {state.best_score:.4f} at step "
        f"{state.best_step})\n  loss per {per}: {losses}\n  accuracy per {per}: {accuracy}"
    )
    audio = [f"{name} {metrics[f'audio/{k}']:{fmt}}" for k, name, fmt in AUDIO_FIGURES if f"audio/{k}" in metrics]
    return line + ("\n  audio: " + ", ".join(audio) if audio else "")


def start_line(metrics: dict) -> str:
    return f"step 0: eval loss {metrics['eval/loss']:.4f} before training (eval.eval_on_start)"


def say(accelerator: Accelerator, message: str) -> None:
    """Print on the main process. Not `accelerator.print`: on XLA, Accelerate 1.15 reports local process
    index -1 unless LOCAL_RANK is set (the TPU launcher does not set it), so that prints nothing."""
    if accelerator.is_main_process:
        print(message, flush=True)


def report_data(accelerator: Accelerator, splits, total_steps: int) -> None:
    eval_items = 0 if splits.eval is None else len(splits.eval)
    say(
        accelerator,
        f"data: {len(splits.train)} training items, {eval_items} eval items; "
        f"{splits.cropped} cropped to data.max_audio_frames, {splits.skipped_long_text} skipped for long text; "
        f"{total_steps} optimizer steps on {accelerator.num_processes} process(es)",
    )


def flat_hparams(cfg: Config) -> dict:
    """The config as flat scalars, which is what trackers' hyper-parameter tables accept, with the credentials in
    its URLs redacted: trackers write them to event files and send them to wandb."""
    flat = {}
    for section, values in redact_tree(cfg.to_dict()).items():
        for key, value in values.items():
            ok = isinstance(value, (int, float, str, bool))
            flat[f"{section}.{key}"] = value if ok else str(value)
    return flat
