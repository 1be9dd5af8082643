"""Exports: a training checkpoint, or the end of training, written out as a `from_pretrained` model folder (LoRA
adapters folded in), a LoRA adapter alone (peft's format), or a native Nari Labs checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import DacModel

from dia_tpu.artifacts import ADAPTER_DIR, CODEC_DIR, CONFIG_FILE, dia_only, open_artifact, put_in_place
from dia_tpu.artifacts.owner import EXPORT, NotOurs, aside, check_replaceable, mark
from dia_tpu.config import Config, run_sampling
from dia_tpu.errors import UserError
from dia_tpu.model.adapters import is_peft, merged
from dia_tpu.model.build import carrying
from dia_tpu.model.codec import make_processor
from dia_tpu.model.load import load_for_inference, load_model, load_trained


def export(model: torch.nn.Module, codec: DacModel, cfg: Config, out_dir: Path) -> None:
    """Write a `from_pretrained`-loadable model directory with processor, generation config (the run's sampling,
    `run_sampling`) and run config; for
    a LoRA model (a PeftModel) also its adapter alone in `adapter/`, then the model with the adapters folded in.

    `out_dir` must be new, empty or an earlier export (`check_replaceable`). The export is written beside it
    and renamed into place, so a crash leaves the earlier export whole. A codec that is not a hub id is saved
    inside the export and the processor points at it by absolute path, so `AutoProcessor.from_pretrained(out_dir)`
    finds it.
    """
    check_replaceable(out_dir, EXPORT, "the export folder")
    with building_beside(out_dir) as building:
        _write_export(model, codec, cfg, out_dir, building)


def _write_export(model: torch.nn.Module, codec: DacModel, cfg: Config, out_dir: Path, building: Path) -> None:
    if is_peft(model):
        save_adapter(model, building / ADAPTER_DIR)
        model = merged(model)
    # safetensors reads storage pointers, which XLA tensors do not have: write host copies.
    weights = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
    # generation_config.json: the run's sampling, which generate, evaluate and the studio then default to.
    model.generation_config = carrying(model.generation_config, run_sampling(cfg, "dia"))
    model.save_pretrained(building, state_dict=weights, safe_serialization=True)
    if cfg.model.codec is None or Path(cfg.model.codec).exists():
        codec.save_pretrained(building / CODEC_DIR)
        codec.name_or_path = str((out_dir / CODEC_DIR).resolve())
    make_processor(codec).save_pretrained(building)
    cfg.save(building / CONFIG_FILE)


@contextmanager
def building_beside(out_dir: Path) -> Iterator[Path]:
    """A new, marked folder beside `out_dir` to write an export into, renamed into place when the block ends and
    removed when it fails."""
    building = aside(out_dir, "building")
    building.mkdir(parents=True)
    mark(building, EXPORT)  # first: what a killed export leaves is then known to be dia_tpu's
    try:
        yield building
        put_in_place(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, form: str = "merge", native_schema: str = "v0.1"
) -> Path:
    """Write a training checkpoint folder out as `form`:
    - "merge": a `from_pretrained`-loadable export (model with any LoRA adapters folded in, processor, config);
    - "adapter": the LoRA adapter alone (peft's format, loadable with `PeftModel.from_pretrained`);
    - "native": a native Nari Labs checkpoint (`.pth` + `config.json`) for their inference code.
    Returns the folder written.
    """
    out_dir = Path(out_dir)
    check_out(Path(checkpoint), out_dir)
    artifact = dia_only(open_artifact(checkpoint))
    if artifact.config is None:
        raise FileNotFoundError(f"{checkpoint} holds no {CONFIG_FILE}: not a dia_tpu checkpoint folder")
    if form == "adapter":
        if artifact.kind != "lora_checkpoint":
            raise UserError(f"{checkpoint} is a full fine-tune (model.lora.rank is 0): it has no adapter to export")
        with building_beside(out_dir) as building:
            save_adapter(load_trained(artifact), building)
    elif form == "native":
        from dia_tpu.model.native_files import save_native

        model = load_model(artifact)
        with building_beside(out_dir) as building:
            save_native(model, building, schema=native_schema)
    else:
        export(*load_for_inference(artifact), artifact.config, out_dir)
    return out_dir


def check_out(checkpoint: Path, out_dir: Path) -> None:
    """Refuse, before anything is read, an --out that is or holds the checkpoint, or lies inside it (the export
    would replace it, or change the files its completion mark lists), or that is not new, empty or an export."""
    source, target = checkpoint.resolve(), out_dir.resolve()
    if source.is_relative_to(target) or target.is_relative_to(source):
        where = "is" if source == target else "holds" if source.is_relative_to(target) else "lies inside"
        raise NotOurs(f"--out {out_dir} {where} the checkpoint {checkpoint} it exports; give a folder of its own")
    check_replaceable(out_dir, EXPORT, "--out")


def save_adapter(model, folder: Path) -> None:
    """Write a PeftModel's adapter (host copies: safetensors cannot read XLA tensors)."""
    state = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state, safe_serialization=True)
