"""Exports: a training checkpoint, or the end of training, written out as a `from_pretrained` model folder (LoRA
adapters folded in), a LoRA adapter alone (peft's format), or a native Nari Labs checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import DacModel

from dia_tpu.artifacts import ADAPTER_DIR, CODEC_DIR, CONFIG_FILE, open_artifact, put_in_place
from dia_tpu.config import Config
from dia_tpu.model.adapters import is_peft, merged
from dia_tpu.model.codec import make_processor
from dia_tpu.model.load import load_for_inference, load_model, load_trained


def export(model: torch.nn.Module, codec: DacModel, cfg: Config, out_dir: Path) -> None:
    """Write a `from_pretrained`-loadable model directory with processor, generation config and run config; for
    a LoRA model (a PeftModel) also its adapter alone in `adapter/`, then the model with the adapters folded in.

    It is written beside `out_dir` and renamed into place, so a crash leaves the earlier export whole. A codec
    that is not a hub id is saved inside the export and the processor points at it by absolute path, so
    `AutoProcessor.from_pretrained(out_dir)` finds it.
    """
    building = out_dir.with_name(out_dir.name + ".tmp")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    if is_peft(model):
        save_adapter(model, building / ADAPTER_DIR)
        model = merged(model)
    # safetensors reads storage pointers, which XLA tensors do not have: write host copies.
    weights = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
    model.save_pretrained(building, state_dict=weights, safe_serialization=True)
    if cfg.model.codec is None or Path(cfg.model.codec).exists():
        codec.save_pretrained(building / CODEC_DIR)
        codec.name_or_path = str((out_dir / CODEC_DIR).resolve())
    make_processor(codec).save_pretrained(building)
    cfg.save(building / CONFIG_FILE)
    put_in_place(building, out_dir)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, form: str = "merge",
                      native_schema: str = "v0.1") -> Path:  # fmt: skip
    """Write a training checkpoint folder out as `form`:
    - "merge": a `from_pretrained`-loadable export (model with any LoRA adapters folded in, processor, config);
    - "adapter": the LoRA adapter alone (peft's format, loadable with `PeftModel.from_pretrained`);
    - "native": a native Nari Labs checkpoint (`.pth` + `config.json`) for their inference code.
    Returns the folder written.
    """
    artifact, out_dir = open_artifact(checkpoint), Path(out_dir)
    if artifact.config is None:
        raise FileNotFoundError(f"{checkpoint} holds no {CONFIG_FILE}: not a dia_tpu checkpoint folder")
    if form == "adapter":
        if artifact.kind != "lora_checkpoint":
            raise ValueError(f"{checkpoint} is a full fine-tune (model.lora.rank is 0): it has no adapter to export")
        save_adapter(load_trained(artifact), out_dir)
        return out_dir
    if form == "native":
        from dia_tpu.model.native_files import save_native

        save_native(load_model(artifact), out_dir, schema=native_schema)
    else:
        export(*load_for_inference(artifact), artifact.config, out_dir)
    return out_dir


def save_adapter(model, folder: Path) -> None:
    """Write a PeftModel's adapter (host copies: safetensors cannot read XLA tensors)."""
    state = {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state, safe_serialization=True)
