"""`open_artifact`: the one reader of any saved model (an export, a training checkpoint or `best/`, a LoRA run's
checkpoint, a native Nari Labs checkpoint, a hub id), which says what it is and where its weights and codec are."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dia_tpu.artifacts.native import SAFETENSORS_NAME, is_dia2_folder, is_native_source, native_weights_file
from dia_tpu.artifacts.run_folder import CODEC_DIR, CONFIG_FILE
from dia_tpu.artifacts.weights import WEIGHTS_FILES, weight_names, weights_file
from dia_tpu.config import Config, ModelConfig, read_saved
from dia_tpu.errors import UserError
from dia_tpu.hub import is_hub_id

Kind = Literal["export", "checkpoint", "lora_checkpoint", "native", "dia2", "hub"]


@dataclass(frozen=True)
class Artifact:
    """A saved model as `open_artifact` found it."""

    source: str  # as given: a path or a hub id
    kind: Kind
    # export: a `from_pretrained` folder; checkpoint: a training state (also `from_pretrained`-loadable);
    # lora_checkpoint: a LoRA run's training state, holding the trained weights only; native: a Nari Labs
    # checkpoint; dia2: a Nari Labs Dia2 folder (upstream's `config.json` and `model.safetensors`); hub: a
    # repository id, read by transformers.
    config: Config | None  # the run's saved config.yaml, when the folder has one
    weights: Path | None  # the model's weights file, when it is local
    codec: ModelConfig  # what `build_codec` needs to build this model's codec

    @property
    def path(self) -> Path:
        return Path(self.source)


def open_artifact(source: str | Path) -> Artifact:
    """Find out what `source` is, read its saved config once, and locate its weights and its codec.

    A local folder without a model in it is a FileNotFoundError naming what is missing.
    """
    name, path = str(source), Path(source)
    if not path.exists():
        if is_hub_id(name):
            return Artifact(name, "hub", None, None, ModelConfig())
        raise FileNotFoundError(f"model not found: {name} (neither a file or folder nor a hub id like org/name)")
    if is_dia2_folder(path):
        weights = path / SAFETENSORS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{path} holds a Dia2 config.json but no {SAFETENSORS_NAME}")
        return Artifact(name, "dia2", None, weights, ModelConfig())
    if is_native_source(path):
        return Artifact(name, "native", None, native_weights_file(path), ModelConfig())
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a model folder or a native checkpoint (.pth, .safetensors)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not an export, a checkpoint or a native checkpoint")
    config = read_saved(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    weights = weights_file(path)
    if weights is None:
        raise FileNotFoundError(f"{path} holds no model weights (one of {', '.join(WEIGHTS_FILES)})")
    if config is not None and config.model.lora.rank and any("lora_" in key for key in weight_names(weights)):
        kind: Kind = "lora_checkpoint"
    else:
        kind = "checkpoint" if is_checkpoint(path) else "export"
    return Artifact(name, kind, config, weights, _codec_of(path, config))


def dia_only(artifact: Artifact) -> Artifact:
    """`artifact`, where a command takes Dia models only: a Dia2 model is refused in words that say so."""
    if artifact.kind == "dia2":
        raise UserError(
            f"{artifact.source} is a Dia2 model (Nari Labs' streaming model, in its upstream format): this command "
            "takes Dia models only (`prepare`, `train`, `export`, `generate`, `evaluate`, `studio`, `push` take Dia2)"
        )
    return artifact


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a training state that training can resume from (Accelerate's optimizer file, or
    a sharded one's folder)."""
    return any(folder.glob("optimizer*.bin")) or (folder / "optimizer_0").is_dir()


def _codec_of(folder: Path, config: Config | None) -> ModelConfig:
    """The codec saved inside an export, else the one its run's config names, else its processor's."""
    if (folder / CODEC_DIR / "config.json").is_file():
        return ModelConfig(codec=str((folder / CODEC_DIR).resolve()))
    if config is not None:
        return config.model
    processor = folder / "processor_config.json"
    if processor.is_file():
        codec = json.loads(processor.read_text())["audio_tokenizer"]["audio_tokenizer_name_or_path"]
        return ModelConfig(codec=codec)
    return ModelConfig()
