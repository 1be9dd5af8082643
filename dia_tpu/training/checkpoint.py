"""Training checkpoints (the whole state, through Accelerate) and their rotation.

A checkpoint `output.dir/checkpoints/step_N/` holds what `accelerator.save_state` writes (model,
optimizer, scheduler, RNG states, the registered TrainState) plus the Dia `config.json` and the run's
`config.yaml`, so the folder also loads with `DiaForConditionalGeneration.from_pretrained`. Where the run
folder's parts are is `dia_tpu.artifacts.RunFolder`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from dia_tpu.artifacts import CONFIG_FILE, RunFolder, weight_names, weights_file
from dia_tpu.config import Config
from dia_tpu.model.adapters import check_trained_names, trainable_state_dict
from dia_tpu.training.runtime import Runtime


@dataclass
class TrainState:
    """Where training stands, in optimizer steps and data position; saved and restored with each checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed on this process
    best_loss: float = math.inf  # lowest eval loss so far, and the step it was reached at
    best_step: int = 0
    evals_since_best: int = 0  # evaluations in a row without an improvement (early stopping counts these)

    def record_eval(self, loss: float, min_delta: float) -> bool:
        """Track the best eval loss; True when `loss` improves on it by more than `min_delta`."""
        if loss < self.best_loss - min_delta:
            self.best_loss, self.best_step, self.evals_since_best = loss, self.step, 0
            return True
        self.evals_since_best += 1
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """None, "auto" (latest checkpoint of the run, or none) or an explicit folder, checked before any work."""
    if resume is None:
        return None
    if resume == "auto":
        found = RunFolder(run_dir).list_checkpoints()
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume: checkpoint folder not found: {path}")
    if weights_file(path) is None:
        raise FileNotFoundError(f"train.resume: {path} holds no saved model state: not a checkpoint folder")
    return path


def save_checkpoint(accelerator: Accelerator, runtime: Runtime, model, cfg: Config, step: int,
                    folder: Path | None = None) -> Path:  # fmt: skip
    """Save the full training state on every process; side files and rotation on the main process.

    The default folder is checkpoints/step_N, rotated to `train.keep_last`. Any other `folder` (the best
    checkpoint) is replaced whole: written beside it first, then swapped in, so a crash never leaves it
    half-written.
    """
    run = RunFolder(cfg.output.dir)
    path = folder or run.checkpoint(step)
    target = path.with_name(path.name + ".tmp") if folder is not None else path
    with _xla_state_workaround(accelerator, runtime):
        accelerator.save_state(str(target), safe_serialization=runtime.safe_weights)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).config.save_pretrained(target)
        cfg.save(target / CONFIG_FILE)
        if folder is None:
            for old in run.list_checkpoints()[: -cfg.train.keep_last]:
                shutil.rmtree(old)
        else:
            if path.exists():
                shutil.rmtree(path)
            target.rename(path)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator: Accelerator, runtime: Runtime, path: Path,
                    trained_only: torch.nn.Module | None = None) -> None:  # fmt: skip
    """Restore model, optimizer, scheduler, RNG and the registered TrainState from a checkpoint folder.

    `trained_only`: the prepared model, when its checkpoints hold only the trained weights (a LoRA run); the
    saved names must be exactly its trainable parameters, and the rest keeps the weights it was built with.
    """
    if trained_only is not None:
        check_trained_names(path, weight_names(weights_file(path)), trained_only)
    with _xla_state_workaround(accelerator, runtime):
        accelerator.load_state(str(path), **({"strict": False} if trained_only is not None else {}))


@contextmanager
def _xla_state_workaround(accelerator: Accelerator, runtime: Runtime) -> Iterator[None]:
    """Work around two Accelerate 1.15 failures on XLA devices (seen with torch_xla 2.9).

    - `save_state`/`load_state` read `.dataset` of every prepared dataloader to find sampler state, and
      XLA's `MpDeviceLoaderWrapper` has no such attribute. The data position is kept in TrainState and the
      epoch order comes from the seeded sampler, so the loaders are hidden from Accelerate meanwhile.
    - safetensors cannot load onto XLA tensors, so on XLA the model state is saved with torch.save
      (`Runtime.safe_weights` is off there) and loaded from `pytorch_model.bin`.
    """
    if not runtime.on_xla:
        yield
        return
    loaders, accelerator._dataloaders = accelerator._dataloaders, []
    try:
        yield
    finally:
        accelerator._dataloaders = loaders


def keep_trainable(models: list, weights: list, output_dir: str) -> None:
    """Accelerate save hook of a LoRA run: keep only the trained weights (adapters, modules_to_save) of each
    model; the base is rebuilt from the config on resume."""
    for i, model in enumerate(models):
        weights[i] = trainable_state_dict(model, weights[i])
