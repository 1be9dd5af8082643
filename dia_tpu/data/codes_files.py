"""Codes encoded elsewhere: `.npy`, `.pt` or `.safetensors` files, read as int16 [T, C] and checked against
the codec, so `prepare` can import them without loading it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_safetensors

from dia_tpu.artifacts.weights import pickle_refusal
from dia_tpu.console import first_line
from dia_tpu.errors import UserError

CODES_EXTENSIONS = (".npy", ".pt", ".safetensors")
CODE_VALUES = 1024  # codebook size: valid codes are 0..1023


def load_codes_file(path: Path, channels: int, layout: str) -> np.ndarray:
    """Codes from a .npy, .pt or .safetensors file as int16 [T, C], checked against the codec.

    `layout` is "CT", "TC", or "auto" (the axis whose size is `channels`). Raises ValueError naming the file.
    """
    path = Path(path)
    codes = _read_codes_array(path)
    if codes.ndim != 2:
        raise UserError(f"{path}: codes must be 2-D [frames, codebooks] or [codebooks, frames], got {codes.shape}")
    if layout == "auto":
        matches = [axis for axis in (0, 1) if codes.shape[axis] == channels]
        if len(matches) == 2:
            raise UserError(
                f"{path}: shape {codes.shape} is square, so the layout is ambiguous; "
                "set prepare.codes_layout to CT or TC"
            )
        if not matches:
            raise UserError(
                f"{path}: shape {codes.shape} has no axis of {channels} codebooks (the codec's; "
                "check prepare.stereo and prepare.codes_layout)"
            )
        layout = "CT" if matches[0] == 0 else "TC"
    if layout not in ("CT", "TC"):
        raise UserError(f"prepare.codes_layout: {layout!r} is not one of auto, CT, TC")
    codes = codes.T if layout == "CT" else codes
    if codes.shape[1] != channels:
        raise UserError(f"{path}: {codes.shape[1]} codebooks with codes_layout {layout}, the codec has {channels}")
    if codes.shape[0] == 0:
        raise UserError(f"{path}: no frames")
    if codes.dtype.kind not in "iu":
        raise UserError(f"{path}: codes must be integers, got {codes.dtype}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= CODE_VALUES:
        raise UserError(f"{path}: codes must be in 0..{CODE_VALUES - 1}, got min {low} max {high}")
    return np.ascontiguousarray(codes, dtype=np.int16)


def _read_codes_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix not in CODES_EXTENSIONS:
        raise UserError(f"{path}: not a codes file ({', '.join(CODES_EXTENSIONS)})")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            loaded = load_safetensors(path)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: cannot read codes: it {pickle_refusal(err)}") from None
    except (OSError, EOFError, ValueError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read codes: {first_line(err)}") from err
    if isinstance(loaded, torch.Tensor):
        loaded = {"codes": loaded}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a tensor or a dict of tensors, got {type(loaded).__name__}")
    return _one_array(path, loaded)


def _one_array(path: Path, tensors: dict) -> np.ndarray:
    """The "codes" entry, or the only tensor, as a numpy array."""
    arrays = {k: v for k, v in tensors.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if "codes" in arrays:
        value = arrays["codes"]
    elif len(arrays) == 1:
        value = next(iter(arrays.values()))
    else:
        raise UserError(f"{path}: expected one tensor or a 'codes' entry, found {sorted(map(str, tensors)) or 'none'}")
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            raise UserError(f"{path}: codes must be integers, got {value.dtype}")
        return value.numpy()
    return value
