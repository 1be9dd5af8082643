"""Native Nari Labs checkpoint files: found in a file, a folder or a hub repository, read (either config schema,
either weights layout, detected from the keys) into a transformers model, and written in either schema.

`dia_tpu.model.native` holds the state-dict mapping these files go through; recognising a native checkpoint on
disk and finding its files locally is `dia_tpu.artifacts.native`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import huggingface_hub
import safetensors
import safetensors.torch
import torch
from torch import Tensor
from transformers import DiaConfig, DiaForConditionalGeneration

from dia_tpu.artifacts.native import (
    CONFIG_NAME,
    NATIVE,
    SAFETENSORS_NAME,
    NativeFormatError,
    is_v01,
    key_layout,
    local_native_files,
    read_json,
)
from dia_tpu.hub import is_hub_id
from dia_tpu.model.native import check_state_dict, clean_native_keys, hf_to_native, layout, native_to_hf
from dia_tpu.model.native_config import V01, V0626, dtype_name, hf_config_to_native, native_config_to_hf

logger = logging.getLogger(__name__)


def load_native(path: str | Path, mmap: bool = False) -> dict[str, Tensor]:
    """A native `.pth` state dict on CPU, unwrapped from a `{"model": ...}` / `{"state_dict": ...}` holder;
    `mmap` maps the file instead of reading it (for looking at shapes)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    for holder in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(holder), dict):
            logger.info("%s: using the state dict under %r", path, holder)
            state = state[holder]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise NativeFormatError(f"{path}: not a state dict of tensors")
    return state


SAVE_NAMES = {V01: "dia-v0_1.pth", V0626: "model.pth"}


def read_native(source: str | Path, weights_name: str | None = None) -> tuple[DiaConfig, dict[str, Tensor]]:
    """(config, transformers-layout state dict) from a native checkpoint: a weights file with `config.json`
    beside it, a folder holding both, or a hub id (org/name, downloaded). Weights in the native layout are
    converted; weights already in transformers' layout are checked as strictly and returned as they are."""
    config_path, weights_path = _locate(source, weights_name)
    config = _read_config(config_path)
    return config, _as_transformers(_read_weights(weights_path), config, weights_path)


def read_native_config(source: str | Path) -> DiaConfig:
    """The `DiaConfig` of a native checkpoint without reading its weights (a hub id's config.json alone)."""
    path = Path(source)
    if is_hub_id(str(source)):
        return _read_config(Path(huggingface_hub.hf_hub_download(repo_id=str(source), filename=CONFIG_NAME)))
    config = (path if path.is_dir() else path.parent) / CONFIG_NAME
    if not config.is_file():
        raise NativeFormatError(f"{config.parent}: no {CONFIG_NAME}")
    return _read_config(config)


def _locate(source: str | Path, weights_name: str | None) -> tuple[Path, Path]:
    """(config.json, weights file) of `source`; a hub id's are downloaded first."""
    path = Path(source)
    if not path.is_file() and not path.is_dir() and is_hub_id(str(source)):
        return _download(str(source), weights_name)
    return local_native_files(source, weights_name)


def _download(repo_id: str, weights_name: str | None) -> tuple[Path, Path]:
    """Fetch a hub repository's config.json and weights file (a single `.pth`, else `model.safetensors`)."""
    if weights_name is None:
        weights_name = _hub_weights(repo_id, huggingface_hub.HfApi().list_repo_files(repo_id))
    logger.info("Downloading %s and %s from %s", CONFIG_NAME, weights_name, repo_id)
    config = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=CONFIG_NAME)
    weights = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=weights_name)
    return Path(config), Path(weights)


def _hub_weights(repo_id: str, files: list[str]) -> str:
    pth = sorted(f for f in files if f.endswith(".pth"))
    if len(pth) == 1:
        return pth[0]
    if SAFETENSORS_NAME in files:
        return SAFETENSORS_NAME
    problem = f"several .pth files {pth}; pass weights_name to pick one" if pth else "no weights file"
    raise NativeFormatError(f"{repo_id}: {problem} (expected one *.pth or {SAFETENSORS_NAME})")


def _read_config(path: Path) -> DiaConfig:
    native = read_json(path)
    try:
        return native_config_to_hf(native)
    except NativeFormatError as err:
        raise NativeFormatError(f"{path}: {err}") from err


def _read_weights(path: Path) -> dict[str, Tensor]:
    """A `.safetensors` or `.pth` state dict on CPU, with training wrappers stripped from its keys."""
    state = safetensors.torch.load_file(path) if path.suffix == ".safetensors" else load_native(path)
    return clean_native_keys(state)


def _as_transformers(state: dict[str, Tensor], config: DiaConfig, origin: Path) -> dict[str, Tensor]:
    """`state` in transformers' layout, checked strictly against the config whichever layout it came in."""
    kind = key_layout(state)
    if kind is None:
        raise NativeFormatError(f"{origin}: keys are neither native nor transformers Dia ones: {sorted(state)[:5]}")
    logger.info("%s: weights in the %s layout", origin, kind)
    try:
        if kind == NATIVE:
            return native_to_hf(state, config)
        check_state_dict(state, {r.hf: r.hf_shape for r in layout(config)}, "transformers-layout state dict")
        return state
    except NativeFormatError as err:
        raise NativeFormatError(f"{origin}: {err}") from err


RELEASES = {V01: "v0.1, nari-labs/Dia-1.6B's", V0626: "0626, nari-labs/Dia-1.6B-0626's"}


def checkpoint_problems(source: str | Path) -> tuple[str, list[str]]:
    """A local native checkpoint's config schema (which release's layout) and every way its weights do not
    match that config: unknown, missing or mis-shaped tensors, read from the file's header or a memory map
    without loading the weights."""
    config_path, weights_path = _locate(source, None)
    release = RELEASES[V01 if is_v01(read_json(config_path)) else V0626]
    try:
        config = _read_config(config_path)
    except NativeFormatError as err:
        return release, [str(err)]
    if weights_path.suffix == ".safetensors":
        with safetensors.safe_open(weights_path, framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    else:
        shapes = {k: v.shape for k, v in load_native(weights_path, mmap=True).items()}
    state = clean_native_keys({k: torch.empty(shape, device="meta") for k, shape in shapes.items()})
    kind = key_layout(state)
    if kind is None:
        return release, [f"{weights_path}: keys are neither native nor transformers Dia ones: {sorted(state)[:5]}"]
    rules = layout(config)
    if kind == NATIVE:
        expected = {k: r.native_shape for r in rules for k in r.native}
    else:
        expected = {r.hf: r.hf_shape for r in rules}
    try:
        check_state_dict(state, expected, f"{weights_path.name} ({kind} layout)")
    except NativeFormatError as err:
        return release, [str(err)]
    return release, []


def load_native_model(source: str | Path, weights_name: str | None = None) -> DiaForConditionalGeneration:
    """A float32 `DiaForConditionalGeneration` in eval mode from a native checkpoint (any source `read_native`
    takes), built from its config and loaded strictly; half-precision weights are upcast exactly."""
    config, state = read_native(source, weights_name)
    model = DiaForConditionalGeneration(config).to(torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_native(model: DiaForConditionalGeneration, out_dir: str | Path, schema: str = V01) -> Path:
    """Write `model` as a native checkpoint in `schema`: `dia-v0_1.pth` (v0.1) or `model.pth` (0626) of
    contiguous CPU tensors in the model's dtype, and `config.json`. Returns the weights file's path."""
    native_config = hf_config_to_native(model.config, schema)  # refuses before anything is written
    if schema == V0626:  # the stored dtype is the tensors', which the model's config does not follow
        native_config["torch_dtype"] = dtype_name(model.dtype)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    native = {k: v.contiguous() for k, v in hf_to_native(state, model.config).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / SAVE_NAMES[schema]
    torch.save(native, weights)
    (out / CONFIG_NAME).write_text(json.dumps(native_config, indent=2) + "\n")
    logger.info("Saved a native %s checkpoint (%d tensors) to %s", schema, len(native), weights)
    return weights
