"""The sampling generation defaults to for a model folder, read from its files without loading it: an export's
`generation_config.json` (its run's sampling, written at export), else a training checkpoint's run's sampling
(`run_sampling` of its `config.yaml`), then the family's published settings. `generate --help`, the studio's
controls and Dia2's generation read it here; Dia's loaded models carry the same values in their generation config
(`model.load.load_for_inference`, `synthesize.with_model_sampling`)."""

from __future__ import annotations

from pathlib import Path

from dia_tpu.artifacts import CONFIG_FILE
from dia_tpu.artifacts.opening import is_checkpoint
from dia_tpu.config import GENERATION_FILE, published, read_generation_file, read_saved, run_sampling
from dia_tpu.families import is_dia2_source
from dia_tpu.families.dia2.decode import Dia2Sampling


def own_sampling(folder: str | Path, family: str) -> dict:
    """A model folder's own sampling: its generation_config.json, else (a training checkpoint) its run's; {}
    for a folder with neither."""
    folder = Path(folder)
    if (folder / GENERATION_FILE).is_file():
        return read_generation_file(folder, family)
    if is_checkpoint(folder) and (folder / CONFIG_FILE).is_file():
        return run_sampling(read_saved(folder / CONFIG_FILE), family)
    return {}


def model_defaults(source: str) -> tuple[str, dict]:
    """(family, {setting: value}) for a local model folder; a hub id or native file reads as Dia's published
    settings until it is loaded."""
    if not Path(source).is_dir():
        return "dia", published("dia")
    family = "dia2" if is_dia2_source(source) else "dia"
    return family, published(family) | own_sampling(source, family)


def dia2_sampling(folder: str | Path, given: dict) -> Dia2Sampling:
    """Dia2's sampling: the flags `given` (None: not given), then the folder's own, then upstream's defaults."""
    return Dia2Sampling(
        **(own_sampling(folder, "dia2") | {key: value for key, value in given.items() if value is not None})
    )
