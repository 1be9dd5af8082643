"""Training checkpoints (the whole state, through Accelerate) and their rotation.

A checkpoint `output.dir/checkpoints/step_N/` holds what `accelerator.save_state` writes (model,
optimizer, scheduler, RNG states, the registered TrainState) plus the Dia `config.json` and the run's
`config.yaml`, so the folder also loads with `DiaForConditionalGeneration.from_pretrained`.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from dia_tpu.adapters import check_trained_names
from dia_tpu.config import Config, load
from dia_tpu.model import CONFIG_FILE, export, load_for_inference, load_model, load_trained, saved_weight_names

CHECKPOINTS = "checkpoints"
BEST = "best"
# Where an export of a LoRA run keeps the adapter alone (peft's adapter_config.json + weights).
ADAPTER_DIR = "adapter"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """None, "auto" (latest checkpoint of the run, or none) or an explicit folder, checked before any work."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume: checkpoint folder not found: {path}")
    if not (path / "model.safetensors").is_file() and not any(path.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"train.resume: {path} holds no saved model state: not a checkpoint folder")
    return path


def save_checkpoint(accelerator: Accelerator, model, cfg: Config, step: int, folder: Path | None = None) -> Path:
    """Save the full training state on every process; side files and rotation on the main process.

    The default folder is checkpoints/step_N, rotated to `train.keep_last`. Any other `folder` (the best
    checkpoint) is replaced whole: written beside it first, then swapped in, so a crash never leaves it
    half-written.
    """
    path = folder or Path(cfg.output.dir) / CHECKPOINTS / f"step_{step}"
    target = path.with_name(path.name + ".tmp") if folder is not None else path
    with _xla_state_workaround(accelerator):
        accelerator.save_state(str(target), safe_serialization=not _on_xla(accelerator))
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).config.save_pretrained(target)
        cfg.save(target / CONFIG_FILE)
        if folder is None:
            for old in list_checkpoints(cfg.output.dir)[: -cfg.train.keep_last]:
                shutil.rmtree(old)
        else:
            if path.exists():
                shutil.rmtree(path)
            target.rename(path)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator: Accelerator, path: Path, trained_only: torch.nn.Module | None = None) -> None:
    """Restore model, optimizer, scheduler, RNG and the registered TrainState from a checkpoint folder.

    `trained_only`: the prepared model, when its checkpoints hold only the trained weights (a LoRA run); the
    saved names must be exactly its trainable parameters, and the rest keeps the weights it was built with.
    """
    if trained_only is not None:
        check_trained_names(path, saved_weight_names(path), trained_only)
    with _xla_state_workaround(accelerator):
        accelerator.load_state(str(path), **({"strict": False} if trained_only is not None else {}))


def _on_xla(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.XLA


@contextmanager
def _xla_state_workaround(accelerator: Accelerator) -> Iterator[None]:
    """Work around two Accelerate 1.15 failures on XLA devices (seen with torch_xla 2.9).

    - `save_state`/`load_state` read `.dataset` of every prepared dataloader to find sampler state, and
      XLA's `MpDeviceLoaderWrapper` has no such attribute. The data position is kept in TrainState and the
      epoch order comes from the seeded sampler, so the loaders are hidden from Accelerate meanwhile.
    - safetensors cannot load onto XLA tensors, so on XLA the model state is saved with torch.save
      (`save_checkpoint` passes safe_serialization=False) and loaded from `pytorch_model.bin`.
    """
    if not _on_xla(accelerator):
        yield
        return
    loaders, accelerator._dataloaders = accelerator._dataloaders, []
    try:
        yield
    finally:
        accelerator._dataloaders = loaders


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, form: str = "merge",
                      native_schema: str = "v0.1") -> Path:  # fmt: skip
    """Write a training checkpoint folder out as `form`:
    - "merge": a `from_pretrained`-loadable export (model with any LoRA adapters folded in, processor, config);
    - "adapter": the LoRA adapter alone (peft's format, loadable with `PeftModel.from_pretrained`);
    - "native": a native Nari Labs checkpoint (`.pth` + `config.json`) for their inference code.
    Returns the folder written.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    saved = checkpoint / CONFIG_FILE
    if not saved.is_file():
        raise FileNotFoundError(f"{checkpoint} holds no {CONFIG_FILE}: not a dia_tpu checkpoint folder")
    cfg = load(saved)
    if form == "adapter":
        if not cfg.model.lora.rank:
            raise ValueError(f"{checkpoint} is a full fine-tune (model.lora.rank is 0): it has no adapter to export")
        save_adapter(load_trained(checkpoint), out_dir)
        return out_dir
    if form == "native":
        from dia_tpu.native import save_native

        save_native(load_model(str(checkpoint)), out_dir, schema=native_schema)
    else:
        export(*load_for_inference(str(checkpoint)), cfg, out_dir)
    return out_dir


def save_adapter(model, folder: Path) -> None:
    """Write a PeftModel's adapter (host copies: safetensors cannot read XLA tensors)."""
    state = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state, safe_serialization=True)
