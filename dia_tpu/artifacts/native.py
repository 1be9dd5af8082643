"""Recognising a native Nari Labs checkpoint on disk and finding its files: a `config.json` beside one weights
file (`.pth` or `.safetensors`), its config in either schema (v0.1's sections or 0626's flat keys), its weights
in either layout (native or transformers'), told apart by where the keys live.

Converting what is found into a transformers model, and back: `dia_tpu.model.native_files`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import safetensors

from dia_tpu.errors import UserError


class NativeFormatError(UserError):
    """A state dict that does not match the layout the config implies."""


# Where a checkpoint's files are: `config.json` beside one weights file.
CONFIG_NAME, SAFETENSORS_NAME = "config.json", "model.safetensors"


WEIGHTS_SUFFIXES = (".pth", ".safetensors")


NATIVE, TRANSFORMERS = "native", "transformers"


# Wrappers that community checkpoints carry: torch.compile's module attribute, DDP's leading `module.`.
COMPILE_PREFIX, DDP_PREFIX = "_orig_mod.", "module."


def clean_key(key: str) -> str:
    return key.replace(COMPILE_PREFIX, "").removeprefix(DDP_PREFIX)


def is_v01(native: object) -> bool:
    return isinstance(native, dict) and {"model", "data"} <= native.keys() and not is_dia2_config(native)


def is_dia2_folder(path: str | Path) -> bool:
    """Whether `path` is a folder holding a Dia2 `config.json`."""
    config = Path(path) / CONFIG_NAME
    return config.is_file() and is_dia2_config(read_json(config))


def is_dia2_config(config: object) -> bool:
    """Whether a `config.json` is Nari Labs' Dia2 format: `data`, `model` and `runtime` blocks, the model with a
    depformer (Dia's native v0.1 config has `model` and `data` too, but neither of the others)."""
    return (
        isinstance(config, dict)
        and {"data", "model", "runtime"} <= config.keys()
        and isinstance(config["model"], dict)
        and "depformer" in config["model"]
    )


def is_native_source(path: str | Path) -> bool:
    """Whether `path` is a native checkpoint rather than a transformers export: a `.pth` file or a folder
    holding one (transformers never writes `.pth`), a v0.1 `config.json`, or safetensors weights whose keys are
    native. A path that does not exist (a hub id) is False: hub ids are read as native only when asked."""
    path = Path(path)
    if not path.exists():
        return False
    folder = path if path.is_dir() else path.parent
    if path.suffix == ".pth" or (path.is_dir() and any(folder.glob("*.pth"))):
        return True
    config = folder / CONFIG_NAME
    if config.is_file() and is_v01(read_json(config)):
        return True
    weights = path if path.is_file() else folder / SAFETENSORS_NAME
    return weights.suffix == ".safetensors" and weights.is_file() and key_layout(safetensors_keys(weights)) == NATIVE


def native_weights_file(source: str | Path) -> Path:
    """The weights file of a local native checkpoint (a file, or the one in a folder)."""
    return local_native_files(source, None)[1]


def local_native_files(source: str | Path, weights_name: str | None) -> tuple[Path, Path]:
    """(config.json, weights file) of a local native checkpoint: a weights file, or a folder holding one
    (`weights_name` picks one in a folder)."""
    path = Path(source)
    if path.is_file():
        if weights_name is not None:
            raise NativeFormatError(f"{path} is a file: weights_name picks a file in a folder or hub repository")
        weights = path
    elif path.is_dir():
        weights = _folder_weights(path, weights_name)
    else:
        raise NativeFormatError(f"{source}: no such file or folder, and not a hub id (org/name)")
    if weights.suffix not in WEIGHTS_SUFFIXES:
        raise NativeFormatError(f"{weights}: not a weights file (expected one of {WEIGHTS_SUFFIXES})")
    config = weights.parent / CONFIG_NAME
    if not config.is_file():
        raise NativeFormatError(f"{weights.parent}: no {CONFIG_NAME} beside {weights.name}")
    return config, weights


def _folder_weights(folder: Path, weights_name: str | None) -> Path:
    """The folder's one `*.pth` or `model.safetensors`, or `weights_name` when given."""
    if weights_name is not None:
        if not (folder / weights_name).is_file():
            raise NativeFormatError(f"{folder}: no weights file {weights_name!r}")
        return folder / weights_name
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_weights_name(p.name))
    if len(found) == 1:
        return folder / found[0]
    problem = f"several weights files {found}; pass weights_name to pick one" if found else "no weights file"
    raise NativeFormatError(f"{folder}: {problem} (expected one *.pth or {SAFETENSORS_NAME})")


def _is_weights_name(name: str) -> bool:
    return name.endswith(".pth") or name == SAFETENSORS_NAME


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NativeFormatError(f"{path}: not JSON ({err})") from err


def key_layout(keys: Iterable[str]) -> str | None:
    """The layout ("native" or "transformers") of a state dict's cleaned keys, from where they live: native
    Dia's top modules are `encoder` and `decoder`, transformers' `model` and `logits_dense`; None for neither
    or a mix."""
    keys = list(keys)
    native = any(k.startswith(("encoder.", "decoder.")) for k in keys)
    hf = any(k.startswith("model.") or k == "logits_dense.weight" for k in keys)
    if native != hf:
        return NATIVE if native else TRANSFORMERS
    return None


def safetensors_keys(path: Path) -> list[str]:
    """The cleaned tensor names of a safetensors file, read from its header alone."""
    with safetensors.safe_open(path, framework="pt") as f:
        return [clean_key(k) for k in f.keys()]
