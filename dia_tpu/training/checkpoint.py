"""Training checkpoints (the whole state, through Accelerate), written so that no crash leaves one half-done,
and loaded without running code.

A checkpoint `output.dir/checkpoints/step_N/` holds what `accelerator.save_state` writes (model, optimizer,
scheduler, one RNG file per process), `train_state.json` (`TrainState`), the Dia `config.json` and the run's
`config.yaml`, so the folder also loads with `DiaForConditionalGeneration.from_pretrained`. Under FSDP2 the model
and optimizer are sharded folders instead (torch's distributed checkpoint, `pytorch_model_fsdp_0/` and
`optimizer_0/`, each process writing its part): dia_tpu reads those whole (`dia-tpu export`, `generate`).

It is built in `step_N.tmp`, every file flushed to disk, then `checkpoint.json` (the completion mark, with
each file's size) is written and the folder renamed into place. A folder without a valid mark is never loaded:
`--resume auto` takes the newest complete checkpoint and moves incomplete ones to `checkpoints/incomplete/`.
Loading unpickles nothing that can run code: the training state is JSON, Accelerate reads its optimizer,
scheduler and RNG files with `torch.load(weights_only=True)`, and a pickle dia_tpu never writes
(`custom_checkpoint_*.pkl`) is refused, and a sharded folder is read through `dia_tpu.artifacts.sharded`: its
metadata checked entry by entry and used as checked, its non-tensor entries (the optimizer's settings) unpickled
as plain data only. Where the run folder's parts are is `dia_tpu.artifacts.RunFolder`.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError

from dia_tpu.artifacts import (
    CONFIG_FILE,
    STATE_FILE,
    RunFolder,
    completion_mark,
    existing_parent,
    mark_complete,
    put_in_place,
    write_failure,
)
from dia_tpu.artifacts.sharded import checked_loading, checked_metadata
from dia_tpu.artifacts.weights import (
    SHARDED_WEIGHTS,
    is_sharded,
    pickle_refusal,
    refusing_code,
    weight_names,
    weights_file,
)
from dia_tpu.config import Config
from dia_tpu.console import first_line
from dia_tpu.errors import UserError
from dia_tpu.model.adapters import check_trained_names, trainable_state_dict
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.state import TrainState


def save_checkpoint(
    accelerator: Accelerator, runtime: Runtime, model, cfg: Config, state: TrainState, folder: Path | None = None
) -> Path:
    """Save the full training state on every process; side files, the completion mark, the rename into place
    and rotation on the main process.

    The default folder is checkpoints/step_N, rotated to `train.keep_last` complete checkpoints; any other
    `folder` (the best checkpoint) is replaced whole. Either is built beside its name first, so a crash at any
    moment leaves the previous checkpoint intact and at worst a `.tmp` folder that nothing loads.
    """
    run = RunFolder(cfg.output.dir)
    path = folder or run.checkpoint(state.step)
    building = path.with_name(path.name + ".tmp")
    if accelerator.is_main_process and building.exists():
        shutil.rmtree(building)  # a save that was cut off before
    _check_space(accelerator, run, path, _expected_bytes(run, accelerator.unwrap_model(model)))
    try:
        with _xla_state_workaround(accelerator, runtime), _spmd_saving(accelerator, runtime, building):
            accelerator.save_state(str(building), safe_serialization=runtime.safe_weights)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).config.save_pretrained(building)
            cfg.save(building / CONFIG_FILE)
            state.save(building / STATE_FILE)
            mark_complete(building, state.step)
    except (OSError, RuntimeError, SafetensorError) as err:
        # A full disk surfaces as OSError from Python's writes, as RuntimeError from torch.save ("unexpected pos")
        # and as SafetensorError from safetensors.
        if accelerator.is_main_process:
            shutil.rmtree(building, ignore_errors=True)  # give the space back
        raise UserError(
            f"could not write checkpoint {path} ({write_failure(err, path)}); {_last_complete(run)}"
        ) from err
    if accelerator.is_main_process:
        put_in_place(building, path)
        if folder is None:
            for stale in run.complete_checkpoints()[: -cfg.train.keep_last]:
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return path


# Free space wanted beyond a checkpoint's expected size: its size can grow a little (a new best, optimizer
# state that appears after the first step).
_SPACE_MARGIN = 1.1


def _check_space(accelerator: Accelerator, run: RunFolder, path: Path, needed: int) -> None:
    """Stop before writing a checkpoint that the disk cannot hold; every process takes the same decision."""
    where = existing_parent(path)
    free = shutil.disk_usage(where).free
    enough = free >= needed * _SPACE_MARGIN
    if accelerator.num_processes > 1:
        flag = torch.tensor(1.0 if enough else 0.0, device=accelerator.device)
        enough = bool(accelerator.reduce(flag, "min").item())
    if not enough:
        raise UserError(
            f"not enough disk space for checkpoint {path}: it needs about {needed / 2**30:.2f} GiB and "
            f"{free / 2**30:.2f} GiB are free on {where} (or on another process's disk); free space or "
            f"lower train.keep_last, then resume with --resume auto; {_last_complete(run)}"
        )


def _last_complete(run: RunFolder) -> str:
    complete = run.complete_checkpoints()
    return f"the last complete checkpoint is {complete[-1]}" if complete else "no complete checkpoint yet"


def load_checkpoint(
    accelerator: Accelerator,
    runtime: Runtime,
    path: Path,
    trained_only: torch.nn.Module | None = None,
) -> TrainState:
    """Restore model, optimizer, scheduler and RNG from a complete checkpoint folder; returns its training state.

    `trained_only`: the prepared model, when its checkpoints hold only the trained weights (a LoRA run); the
    saved names must be exactly its trainable parameters, and the rest keeps the weights it was built with.
    """
    _check_loads_no_code(path, accelerator.process_index)
    _check_sharding_matches(path, runtime)
    if trained_only is not None:
        check_trained_names(path, weight_names(weights_file(path)), trained_only)
    try:
        with _xla_state_workaround(accelerator, runtime), checked_loading(path), refusing_code(path):
            accelerator.load_state(str(path), **({"strict": False} if trained_only is not None else {}))
    except (RuntimeError, EOFError, KeyError) as err:
        raise UserError(f"{path}: the training state cannot be restored ({first_line(err)})") from err
    return TrainState.read(path / STATE_FILE)


def _check_sharding_matches(path: Path, runtime: Runtime) -> None:
    """A sharded (FSDP2) checkpoint resumes only sharded, and an unsharded one only unsharded: Accelerate looks
    for one layout and would fail on the other with a missing file."""
    sharded = weights_file(path) is not None and is_sharded(weights_file(path))
    if sharded != runtime.fsdp:
        saved, now = ("FSDP2-sharded", "without FSDP") if sharded else ("unsharded", "with FSDP2")
        raise UserError(
            f"{path} holds an {saved} training state and this run is {now}: resume it with the "
            "train.sharding (and launcher) it was saved with, or export it (dia-tpu export) and start "
            "a new run from the export"
        )


def _check_loads_no_code(path: Path, process_index: int) -> None:
    """Refuse what Accelerate would unpickle without `weights_only` (custom checkpoints), and read this
    process's RNG file the way Accelerate does (`weights_only=True`) first: Accelerate would skip an RNG file it
    cannot read without a word, and the run would resume with other random numbers."""
    pickles = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise UserError(
            f"{path} holds {', '.join(pickles)}: dia_tpu never writes these, and loading a pickle "
            "can run code, so it is not loaded; delete the file(s) to resume from this checkpoint"
        )
    for folder, optimizer in ((path / SHARDED_WEIGHTS, False), (path / "optimizer_0", True)):
        if folder.is_dir():
            checked_metadata(folder, allow_bytes=optimizer)  # early, naming the entry; the load checks again
    rng = path / f"random_states_{process_index}.pkl"
    try:
        accelerate_load(rng)
    except pickle.UnpicklingError as err:
        raise UserError(f"{rng}: {pickle_refusal(err)}, so it is not loaded") from None
    except (OSError, EOFError, RuntimeError) as err:
        raise UserError(f"{rng}: not a random-state file to resume from ({first_line(err)})") from err


def _expected_bytes(run: RunFolder, model: torch.nn.Module) -> int:
    """What the next checkpoint will take on disk: the newest complete one's size, or before the first one,
    the trainable weights with AdamW's two moments plus the rest of the weights (fp32)."""
    complete = run.complete_checkpoints()
    if complete:
        return sum(completion_mark(complete[-1])["files"].values())
    params = list(model.parameters())
    return sum(4 * p.numel() * (3 if p.requires_grad else 1) for p in params)


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


def _spmd_saving(accelerator: Accelerator, runtime: Runtime, folder: Path):
    """Under SPMD, the model and optimizer files written from gathered host copies (`spmd.saving_from_host`)."""
    if not runtime.spmd:
        return contextlib.nullcontext()
    from dia_tpu.training.spmd import saving_from_host

    return saving_from_host(accelerator, folder)


def keep_trainable(models: list, weights: list, output_dir: str) -> None:
    """Accelerate save hook of a LoRA run: keep only the trained weights (adapters, modules_to_save) of each
    model; the base is rebuilt from the config on resume."""
    for i, model in enumerate(models):
        weights[i] = trainable_state_dict(model, weights[i])
