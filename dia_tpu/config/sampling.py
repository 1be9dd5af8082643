"""Sampling defaults, and how they travel with a model.

Each family has published settings (`SAMPLING`: Dia-1.6B's; `DIA2_SAMPLING`: upstream Dia2's for the audio
stream). A run's samples sample with `samples.*` where set (`run_sampling`), and its exports carry that sampling
in `generation_config.json`, as transformers models carry theirs; `generate`, `evaluate` and the studio start from
a model's file, then from its family's published settings, and a flag given wins over both."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from dia_tpu.errors import UserError

GENERATION_FILE = "generation_config.json"


@dataclass(frozen=True)
class Sampling:
    """Dia-1.6B's published sampling settings: the defaults of `dia-tpu generate`, of training samples and
    of the generation config written with every export, where the run or the model sets none."""

    guidance_scale: float = 3.0  # classifier-free guidance; 1.0 turns it off
    temperature: float = 1.8  # divides the logits before sampling
    top_p: float = 0.90  # nucleus sampling; 1.0 keeps every token
    top_k: int = 45  # sample among this many tokens; also the candidate set of Dia's guidance step


@dataclass(frozen=True)
class Dia2Published:
    """Upstream Dia2's audio sampling (its text stream's, 0.6 over the top 50, stay Dia2Sampling's own)."""

    guidance_scale: float = 2.0  # 1.0: off
    temperature: float = 0.8  # 0 is argmax
    top_k: int = 50


SAMPLING = Sampling()
DIA2_SAMPLING = Dia2Published()
FAMILY_SAMPLING = {"dia": SAMPLING, "dia2": DIA2_SAMPLING}


def published(family: str) -> dict:
    """The family's published settings, by name."""
    return asdict(FAMILY_SAMPLING[family])


def run_sampling(cfg, family: str) -> dict:
    """The sampling a run's samples and judged audio use and its exports carry: `samples.*` where set; where not,
    guidance off (1.0) for a run that never trained the unconditional branch (`train.unconditional_frac` 0:
    guidance would mix in a prediction the model never learnt), else the family's published value."""
    out = {}
    for key, value in published(family).items():
        chosen = getattr(cfg.samples, key)
        if chosen is None and key == "guidance_scale" and cfg.train.unconditional_frac == 0:
            chosen = 1.0
        out[key] = value if chosen is None else chosen
    return out


def read_generation_file(folder: str | Path, family: str) -> dict:
    """The sampling settings a model folder's `generation_config.json` holds, of those the family samples with
    ({} without the file). A value that is not a number is refused, naming the file and key."""
    path = Path(folder) / GENERATION_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a JSON generation config ({err})") from err
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a JSON object of generation settings")
    found = {}
    for key, default in published(family).items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
        found[key] = type(default)(value)
    return found


def described(sampling: dict) -> str:
    """Sampling settings as one line of words: `guidance_scale 1.0, temperature 0.7, ...`."""
    return ", ".join(f"{key} {value}" for key, value in sampling.items())


def unguided_warning(model: str, guidance_scale: float | None, unconditional_frac: float | None) -> str | None:
    """A note for guidance above 1 asked of a model trained without text dropout, or None."""
    if guidance_scale is None or guidance_scale <= 1 or unconditional_frac != 0:
        return None
    return (
        f"note: {model} has train.unconditional_frac 0 (training without text dropout), so guidance {guidance_scale} "
        "mixes in an unconditional prediction the model never learns; its default guidance is 1 (off)"
    )
