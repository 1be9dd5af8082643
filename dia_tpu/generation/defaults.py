"""The sampling generation defaults to for a model, read from its files without loading it: for `generate --help`
and the studio's controls, which show them before anything is generated. The same values the generation paths
resolve once the model is loaded (`synthesize.with_model_sampling`, `dia2_sampling`)."""

from __future__ import annotations

from pathlib import Path

from dia_tpu.artifacts import open_artifact
from dia_tpu.config import published, read_generation_file, run_sampling
from dia_tpu.families import is_dia2_source
from dia_tpu.families.dia2.decode import Dia2Sampling


def model_defaults(source: str) -> tuple[str, dict]:
    """(family, {setting: value}) for a local model folder or checkpoint: its generation_config.json, a
    checkpoint's run's sampling, then the family's published settings. A hub id or native file reads as Dia's
    published settings until it is loaded."""
    if not Path(source).is_dir():
        return "dia", published("dia")
    if is_dia2_source(source):
        return "dia2", published("dia2") | read_generation_file(source, "dia2")
    artifact = open_artifact(source)
    if artifact.kind in ("checkpoint", "lora_checkpoint") and artifact.config is not None:
        return "dia", run_sampling(artifact.config, "dia")
    return "dia", published("dia") | read_generation_file(source, "dia")


def dia2_sampling(folder: str | Path, given: dict) -> Dia2Sampling:
    """Dia2's sampling: the flags `given` (None: not given), then the folder's generation_config.json, then
    upstream's defaults."""
    chosen = read_generation_file(folder, "dia2") | {key: value for key, value in given.items() if value is not None}
    return Dia2Sampling(**chosen)
