"""A saved model's weights file, in each format a run writes it: safetensors (one file or an index), torch's
.bin (Accelerate on XLA), or a sharded FSDP2 checkpoint's folder in torch's distributed checkpoint format,
read through `dia_tpu.artifacts.sharded` so that nothing in it runs code."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dia_tpu.artifacts.sharded import read_tensors, tensor_entries
from dia_tpu.errors import UserError

# Where a sharded (FSDP2) checkpoint keeps the model: a folder in torch's distributed checkpoint format, each
# process's part in a file of its own, with `.metadata` listing every tensor.
SHARDED_WEIGHTS = "pytorch_model_fsdp_0"
# The files a model's weights may be in: a transformers folder or Accelerate checkpoint (safetensors, or
# torch's .bin where Accelerate saves that way, on XLA), or a sharded checkpoint's folder, in that order of
# preference.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", SHARDED_WEIGHTS)


def pickle_refusal(err: BaseException) -> str:
    """Why torch's weights-only reader refused a file, in one line and without torch's advice to load it unchecked
    (which would run whatever it holds): a pickle naming code, or bytes that are not tensors at all."""
    text = str(err)
    if found := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return (
            f"holds a pickle that is not only tensors and plain values (it names {found[1]}): loading it could run code"
        )
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return f"is not readable as tensors ({found[1].strip()[:120] if found else 'not a pickle torch reads'})"


@contextmanager
def refusing_code(what: str | Path) -> Iterator[None]:
    """Loads inside the block that torch refuses as more than weights come out as one ValueError naming `what`."""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise UserError(f"{what}: {pickle_refusal(err)}, so it is not loaded") from None


def weights_file(folder: Path) -> Path | None:
    for name in WEIGHTS_FILES:
        if (folder / name).is_file() or (name == SHARDED_WEIGHTS and (folder / name).is_dir()):
            return folder / name
    return None


def is_sharded(weights: Path) -> bool:
    return weights.name == SHARDED_WEIGHTS


def weight_names(weights: Path) -> set[str]:
    """The tensor names in a weights file, read from its header where the format has one."""
    if is_sharded(weights):
        return set(_sharded_tensors(weights))
    if weights.suffix == ".bin":
        return set(read_weights(weights))
    if weights.name.endswith(".index.json"):
        return set(json.loads(weights.read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        return set(f.keys())


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights on the CPU (torch's format read with weights_only, a sharded checkpoint through
    `dia_tpu.artifacts.sharded`: neither can run code), whole: a sharded checkpoint's parts are put together."""
    if is_sharded(weights):
        state = {
            name: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
            for name, meta in _sharded_tensors(weights).items()
        }
        read_tensors(weights, {"model": state})
        return state
    if weights.suffix == ".bin":
        return torch.load(weights, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(weights)


def _sharded_tensors(folder: Path) -> dict:
    """The model's tensors in a sharded checkpoint (Accelerate saves them under "model."), with their metadata."""
    listed = tensor_entries(folder)
    return {name.removeprefix("model."): meta for name, meta in listed.items() if name.startswith("model.")}
