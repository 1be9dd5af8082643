"""A saved model's weights file, in each format a run writes it: safetensors (one file or an index), torch's
.bin (Accelerate on XLA), or a sharded FSDP2 checkpoint's folder in torch's distributed checkpoint format,
whose metadata is read without letting its pickle run code."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import torch

# Where a sharded (FSDP2) checkpoint keeps the model: a folder in torch's distributed checkpoint format, each
# process's part in a file of its own, with `.metadata` listing every tensor.
SHARDED_WEIGHTS = "pytorch_model_fsdp_0"
# The files a model's weights may be in: a transformers folder or Accelerate checkpoint (safetensors, or
# torch's .bin where Accelerate saves that way, on XLA), or a sharded checkpoint's folder, in that order of
# preference.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", SHARDED_WEIGHTS)


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
    """A checkpoint's weights on the CPU (torch's format read with weights_only, a sharded checkpoint's metadata
    with `read_sharded_metadata`: neither can run code), whole: a sharded checkpoint's parts are put together."""
    if is_sharded(weights):
        import torch.distributed.checkpoint as dcp

        state = {name: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
                 for name, meta in _sharded_tensors(weights).items()}  # fmt: skip
        with warnings.catch_warnings():  # torch warns that it reads in one process, as it is asked to
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": state}, storage_reader=dcp.FileSystemReader(weights), no_dist=True)
        return state
    if weights.suffix == ".bin":
        return torch.load(weights, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(weights)


# What the metadata of torch's distributed checkpoint is made of; anything else in its pickle is refused.
_DCP_CLASSES = {
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _DCP_CLASSES or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a distributed checkpoint's metadata")


def read_sharded_metadata(folder: Path):
    """The `.metadata` of a folder in torch's distributed checkpoint format. torch reads it with pickle, which can
    run code; here only the classes that format is made of are allowed, so a planted file is refused."""
    path = folder / ".metadata"
    try:
        with open(path, "rb") as handle:
            return _MetadataUnpickler(handle).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not a distributed checkpoint's metadata ({err})") from err


def _sharded_tensors(folder: Path) -> dict:
    """The model's tensors in a sharded checkpoint (Accelerate saves them under "model."), with their metadata."""
    listed = read_sharded_metadata(folder).state_dict_metadata
    return {name.removeprefix("model."): meta for name, meta in listed.items() if name.startswith("model.")}
