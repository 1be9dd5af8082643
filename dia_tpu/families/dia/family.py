"""Dia as a family of the table in `dia_tpu.families`."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import DiaForConditionalGeneration

from dia_tpu.config import Config, DataConfig, ModelConfig, TrainConfig
from dia_tpu.data.batching import BATCH_RANKS, make_collator, synthetic_batch
from dia_tpu.data.check import check_dataset, data_model_problems
from dia_tpu.data.coder import DacCoder
from dia_tpu.data.dataset import CodesDataset
from dia_tpu.export import export, export_checkpoint
from dia_tpu.families.dia.loss import DiaScorer, codebook_weights
from dia_tpu.families.dia.training import expose_input_embeddings, set_up_for_training
from dia_tpu.model.build import architecture_config, build_model, plain_model
from dia_tpu.model.codec import build_codec


class DiaFamily:
    name = "dia"
    byte_text = True
    publishes = True
    shard_units = ("DiaEncoderLayer", "DiaDecoderLayer")
    batch_ranks = BATCH_RANKS

    def build(self, cfg: ModelConfig, attention: str | None) -> torch.nn.Module:
        return build_model(cfg, attention)

    def architecture(self, cfg: ModelConfig, attention: str | None) -> torch.nn.Module:
        model = DiaForConditionalGeneration(architecture_config(cfg))
        if attention is not None:
            model.set_attn_implementation(attention)
        return model

    def positions(self, batch: dict) -> int:
        return batch["decoder_input_ids"].shape[1]

    def set_up_for_training(self, model: torch.nn.Module, cfg: Config, on_xla: bool) -> torch.nn.Module:
        return set_up_for_training(model, cfg, on_xla)

    def data_problems(self, cfg: Config, info: dict, model: torch.nn.Module) -> list[str]:
        return data_model_problems(cfg, info, model.config)

    def coder(self, cfg: Config) -> DacCoder:
        return DacCoder(cfg)

    def check(self, cfg: Config, min_speaker_seconds: float) -> tuple[int, list]:
        return check_dataset(cfg, min_speaker_seconds)

    def items(self, table: Dataset, cfg: Config, model: torch.nn.Module, *, train: bool) -> CodesDataset:
        return CodesDataset(table, cfg.data, cfg.train.unconditional_frac, train=train)

    def collator(self, cfg: DataConfig, model: torch.nn.Module, fill_to: int = 0, *, bucketed: bool = False):
        return make_collator(cfg, model.config, fill_to, bucketed=bucketed)

    def synthetic_batch(self, cfg: Config, model: torch.nn.Module) -> dict:
        return synthetic_batch(cfg, model.config)

    def scorer(self, cfg: TrainConfig, model: torch.nn.Module) -> DiaScorer:
        return DiaScorer(codebook_weights(cfg.codebook_weights, len(model.config.delay_pattern)))

    def expose_input_embeddings(self, model: torch.nn.Module) -> None:
        expose_input_embeddings(model)

    def export(self, model: torch.nn.Module, cfg: Config, folder: Path, weights: dict | None = None) -> None:
        if weights is not None:
            model = plain_model(model.config, weights, model.generation_config)
        export(model, build_codec(cfg.model), cfg, folder)

    def export_checkpoint(self, checkpoint: str | Path, out: str | Path, form: str, native_schema: str) -> Path:
        return export_checkpoint(checkpoint, out, form, native_schema)


FAMILY = DiaFamily()
