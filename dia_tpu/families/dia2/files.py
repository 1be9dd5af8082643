"""A Dia2 model folder in upstream's format: `config.json` and `model.safetensors`, read strictly and written
back as they were.

Upstream's loader copies the keys it knows and skips the rest; here a weights file must hold exactly the
model's tensors, with their shapes: anything unknown, missing or misshapen is one error that names it. Writing
keeps upstream's key names and the file's metadata, so a folder loaded and saved unchanged is byte for byte the
same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dia_tpu.errors import UserError, UserFileMissing
from dia_tpu.families.dia2.config import read_config
from dia_tpu.families.dia2.model import Dia2Model

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class Dia2WeightsError(UserError):
    """A weights file that does not fit the model its config describes."""


def read_model(folder: str | Path) -> Dia2Model:
    """The Dia2 model of an upstream-format folder, on the CPU in fp32."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise UserFileMissing(f"{folder}: no {name}; a Dia2 model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    model = Dia2Model(read_config(folder / CONFIG_FILE))
    load_weights(model, folder / WEIGHTS_FILE)
    return model


def load_weights(model: Dia2Model, path: Path) -> None:
    """Copy `path`'s tensors into `model`; unknown, missing or misshapen keys are one error naming them."""
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {key: f.get_slice(key).get_shape() for key in f.keys()}
            problems = _mismatches(expected, found)
            if problems:
                raise Dia2WeightsError(f"{path}: does not fit the model its {CONFIG_FILE} describes: {problems}")
            with torch.no_grad():
                for key, tensor in expected.items():
                    tensor.copy_(f.get_tensor(key))
    except SafetensorError as err:
        raise Dia2WeightsError(f"{path}: not a readable safetensors file ({err})") from err


def _mismatches(expected: dict[str, torch.Tensor], found: dict[str, list[int]]) -> str:
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    shapes = [
        f"{key} {found[key]} (the config gives {list(expected[key].shape)})"
        for key in sorted(set(found) & set(expected))
        if list(found[key]) != list(expected[key].shape)
    ]
    parts = []
    for label, keys in (("unknown keys", unknown), ("missing keys", missing), ("other shapes", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def write_model(model: Dia2Model, folder: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as an upstream-format folder (its config as read, its weights under upstream's names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.raw, indent=2) + "\n")
    tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    save_file(tensors, folder / WEIGHTS_FILE, metadata=metadata)
    return folder


def weights_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata a safetensors file carries (upstream's files say their format), to write it back."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()
