"""Model families dia_tpu trains, in one table: each a package offering the same few names (`Family`), the
shared code (the loop, checkpoints, resume, sharding, evaluation's sums) asking for them and never testing
which family it holds.

- `dia`: transformers' `DiaForConditionalGeneration` over DAC codes; byte text and a delayed code grid with
  BOS/EOS; a loss head per codebook.
- `dia2`: `families.dia2.model.Dia2Model` (upstream's parameter names) over Mimi codes; two text streams and
  the actions made from timed words; loss heads for the action and each codebook.

A family is told from `model.family`, or with `auto` from the `config.json` of `model.pretrained`: Nari Labs'
Dia2 format (`data`, `model` with a depformer, `runtime`) is Dia2, anything else Dia. A third family is a new
package offering the same names and one line in `FAMILIES`.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Protocol

import torch

from dia_tpu.artifacts.native import is_dia2_config, is_dia2_folder
from dia_tpu.config import Config, DataConfig, ModelConfig, TrainConfig
from dia_tpu.data.coder import Coder
from dia_tpu.families.heads import Scorer
from dia_tpu.hub import is_hub_id

# Family name -> the module whose FAMILY it is (imported when first asked for).
FAMILIES = {"dia": "dia_tpu.families.dia.family", "dia2": "dia_tpu.families.dia2.family"}


class Family(Protocol):
    """What the shared training code asks of a model family."""

    name: str
    # Whether `dia-tpu push` (and `train.push_to_hub`) publishes its exports yet.
    publishes: bool
    # The class names of its repeated layers: FSDP2's units, each gathered whole for its forward and backward.
    shard_units: tuple[str, ...]
    # Its batches' tensors and their ranks, all batch-first: what sharded training splits along the batch.
    batch_ranks: dict[str, int]
    # Whether its text is Dia's bytes, limited by `data.max_text_tokens` (`data.long_text` applies).
    byte_text: bool

    def build(self, cfg: ModelConfig, attention: str | None) -> torch.nn.Module:
        """The model of `cfg`, its weights loaded, in fp32 on the CPU."""

    def architecture(self, cfg: ModelConfig, attention: str | None) -> torch.nn.Module:
        """The model of `cfg` built from its config alone, no weights read (`dia-tpu plan` builds it on the meta
        device)."""

    def positions(self, batch: dict) -> int:
        """The sequence positions the model runs over for a collated batch."""

    def set_up_for_training(self, model: torch.nn.Module, cfg: Config, on_xla: bool) -> torch.nn.Module:
        """No generation cache, activation checkpointing, frozen parts and LoRA adapters, as `cfg` asks."""

    def data_problems(self, cfg: Config, info: dict, model: torch.nn.Module) -> list[str]:
        """Why the prepared dataset (its manifest `info`) does not fit the model: one line each."""

    def coder(self, cfg: Config) -> Coder:
        """What `prepare` makes of each clip for this family: its codec's codes and any columns its rows add."""

    def check(self, cfg: Config, min_speaker_seconds: float) -> tuple[int, list]:
        """`dia-tpu check`: the prepared dataset's item count and what in it will train badly (`Finding`s)."""

    def items(self, table, cfg: Config, model: torch.nn.Module, *, train: bool) -> torch.utils.data.Dataset:
        """A prepared table's rows as the items the collator stacks."""

    def collator(self, cfg: DataConfig, model: torch.nn.Module, fill_to: int = 0, *, bucketed: bool = False):
        """Stacks items into fixed-shape batches (`fill_to`: complete short batches with rows that count nothing)."""

    def synthetic_batch(self, cfg: Config, model: torch.nn.Module) -> dict:
        """One collated batch of `train.batch_size` full-length random items (seeded), for `dia-tpu bench`."""

    def scorer(self, cfg: TrainConfig, model: torch.nn.Module) -> Scorer:
        """The family's loss, weighted as `cfg` says."""

    def expose_input_embeddings(self, model: torch.nn.Module) -> None:
        """Before FSDP2 wraps the model: give it the `get_input_embeddings` Accelerate asks for, where it lacks one."""

    def export(self, model: torch.nn.Module, cfg: Config, folder: Path, weights: dict | None = None) -> None:
        """Write the trained model as the family's loadable folder; `weights`: a sharded model's gathered ones."""

    def export_checkpoint(self, checkpoint: str | Path, out: str | Path, form: str, native_schema: str) -> Path:
        """`dia-tpu export`: a training checkpoint written out as `form` (merge, adapter, native)."""


def family_named(name: str) -> Family:
    return importlib.import_module(FAMILIES[name]).FAMILY


def family_of(cfg: ModelConfig) -> Family:
    """The family `cfg` names, or (with `family: auto`) the one its `pretrained` model's config.json says."""
    if cfg.family != "auto":
        return family_named(cfg.family)
    return family_named("dia2" if cfg.pretrained is not None and is_dia2_source(cfg.pretrained) else "dia")


def family_of_folder(path: str | Path) -> Family:
    """The family of a saved model folder (an export, a checkpoint): Dia2 when its config.json says so."""
    return family_named("dia2" if is_dia2_folder(path) else "dia")


def is_dia2_source(source: str) -> bool:
    """Whether a folder or hub repository holds a Dia2 model: its config.json, read (from the hub: that file
    alone, once a process); a repository that cannot be read is left to the Dia loader to report."""
    if not is_hub_id(source):
        return is_dia2_folder(source)
    return _is_dia2_repository(source)


@functools.cache
def _is_dia2_repository(source: str) -> bool:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    path = try_to_load_from_cache(source, "config.json")  # a cached copy first: no request, no wait offline
    if not isinstance(path, str):
        try:
            path = hf_hub_download(source, "config.json")
        except Exception:  # noqa: BLE001 - unreachable, missing, gated: Dia's loader says which, in one line
            return False
    try:
        return is_dia2_config(json.loads(Path(path).read_text()))
    except ValueError:
        return False
