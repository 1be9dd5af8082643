"""Dia2 as a family of the table in `dia_tpu.families`: the model read from an upstream-format folder or hub
repository, its items made from Mimi codes and timed words, its loss over the action and codebook heads, and its
export in upstream's format."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset

from dia_tpu.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig
from dia_tpu.data.shards import read_prepare_info
from dia_tpu.families.dia2.adapters import GROUPS, with_lora
from dia_tpu.families.dia2.assets import load_tokenizer, text_ids
from dia_tpu.families.dia2.check import check_dataset, config_problems
from dia_tpu.families.dia2.checkpoint import export_checkpoint
from dia_tpu.families.dia2.config import read_config
from dia_tpu.families.dia2.data import BATCH_RANKS, Dia2Collator, Dia2Items, synthetic_batch
from dia_tpu.families.dia2.export import export_dia2
from dia_tpu.families.dia2.files import read_model
from dia_tpu.families.dia2.loss import Dia2Scorer, HeadWeights
from dia_tpu.families.dia2.model import Dia2Model
from dia_tpu.families.dia2.prepare import Dia2Coder
from dia_tpu.families.dia2.source import source_config, source_folder


class Dia2Family:
    name = "dia2"
    byte_text = False
    publishes = True
    shard_units = ("DecoderLayer", "DepformerLayer")
    batch_ranks = BATCH_RANKS

    def build(self, cfg: ModelConfig, attention: str | None) -> Dia2Model:
        return read_model(source_folder(_pretrained(cfg)))

    def architecture(self, cfg: ModelConfig, attention: str | None) -> Dia2Model:
        return Dia2Model(read_config(source_config(_pretrained(cfg))))

    def positions(self, batch: dict) -> int:
        return batch["actions"].shape[1]

    def set_up_for_training(self, model: Dia2Model, cfg: Config, on_xla: bool) -> torch.nn.Module:
        m = cfg.model
        model.transformer.checkpointing = model.depformer.checkpointing = m.gradient_checkpointing
        if m.gradient_checkpointing and on_xla:
            checkpoint_with_torch_xla(model)
        backbone = model.transformer
        if m.freeze.decoder_layers > len(backbone.layers):
            raise ConfigError(
                f"model.freeze.decoder_layers={m.freeze.decoder_layers}, but the backbone has {len(backbone.layers)} "
                "layers"
            )
        parts = [backbone.text_embed, model.depformer.text_embed] if m.freeze.text_encoder else []
        parts += [backbone.audio_embeds, model.depformer.audio_embeds] if m.freeze.audio_embeddings else []
        parts += list(backbone.layers[: m.freeze.decoder_layers])
        for part in parts:
            if part is not None:
                part.requires_grad_(False)
        refuse_dia_settings(m)
        if m.lora.rank:
            return with_lora(model, m.lora.rank, m.lora.alpha, m.lora.dropout, tuple(m.lora.targets))
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("model.freeze leaves no parameter to train")
        return model

    def data_problems(self, cfg: Config, info: dict, model: torch.nn.Module) -> list[str]:
        return config_problems(cfg, info, _config(model))

    def coder(self, cfg: Config) -> Dia2Coder:
        _pretrained(cfg.model)
        refuse_dia_settings(cfg.model)
        return Dia2Coder(cfg)

    def check(self, cfg: Config, min_speaker_seconds: float) -> tuple[int, list]:
        return check_dataset(cfg, min_speaker_seconds)

    def items(self, table: Dataset, cfg: Config, model: torch.nn.Module, *, train: bool) -> Dia2Items:
        config = _config(model)
        tokenizer = load_tokenizer(source_folder(cfg.model.pretrained), config)
        rate = float(read_prepare_info(cfg.data.dataset)["frame_rate"])
        return Dia2Items(
            table,
            cfg.data,
            config,
            lambda words: tokenizer.encode(words, add_special_tokens=False),
            text_ids(config, tokenizer),
            rate,
            cfg.train.unconditional_frac,
            train=train,
        )

    def collator(self, cfg: DataConfig, model: torch.nn.Module, fill_to: int = 0, *, bucketed: bool = False):
        buckets = tuple(cfg.buckets) if bucketed else ()
        return Dia2Collator(_config(model), cfg.max_audio_frames, fill_to, buckets)

    def synthetic_batch(self, cfg: Config, model: torch.nn.Module) -> dict:
        return synthetic_batch(cfg, _config(model))

    def scorer(self, cfg: TrainConfig, model: torch.nn.Module) -> Dia2Scorer:
        codebooks = _config(model).codebooks
        if cfg.codebook_weights and len(cfg.codebook_weights) != codebooks:
            raise ConfigError(
                f"train.codebook_weights has {len(cfg.codebook_weights)} entries but the model has {codebooks} "
                "codebooks"
            )
        return Dia2Scorer(HeadWeights(codebooks=tuple(cfg.codebook_weights)), codebooks)

    def expose_input_embeddings(self, model: torch.nn.Module) -> None:
        """Dia2's tables are summed, not one input embedding: they stay with the root unit."""

    def export(self, model: torch.nn.Module, cfg: Config, folder: Path, weights: dict | None = None) -> None:
        if weights is not None:
            plain = Dia2Model(_config(model))
            plain.load_state_dict({k: v.detach().cpu().float() for k, v in weights.items()})
            model = plain
        export_dia2(model, cfg, source_folder(cfg.model.pretrained), folder)

    def export_checkpoint(self, checkpoint: str | Path, out: str | Path, form: str, native_schema: str) -> Path:
        return export_checkpoint(checkpoint, out, form, native_schema)


def refuse_dia_settings(m: ModelConfig) -> None:
    if unused := dia_settings(m):
        raise ConfigError(f"{', '.join(unused)}: Dia's settings, which a Dia2 model has no use for; leave them out")


def dia_settings(m: ModelConfig) -> list[str]:
    """The settings given that only Dia reads (a Dia2 model would silently ignore them), named."""
    default = ModelConfig()
    named = [
        f"model.{key}"
        for key in ("stereo", "delay_pattern", "attention_scale")
        if getattr(m, key) != getattr(default, key)
    ]
    if m.codec != default.codec:
        named.append(f"model.codec={m.codec} (Dia2 speaks with its own Mimi, config.json's assets.mimi)")
    if m.lora.modules_to_save:
        named.append("model.lora.modules_to_save")
    if m.lora.parts != default.lora.parts:
        named.append("model.lora.parts")
    named += [f"model.lora.targets={t} (Dia2 takes attention and mlp)" for t in m.lora.targets if t not in GROUPS]
    return named


def checkpoint_with_torch_xla(model: Dia2Model) -> None:
    """torch_xla's checkpoint for the layers (torch's fails on XLA tensors; torch_xla's puts optimization barriers
    around the recomputation, which XLA would otherwise merge away). It is reentrant, passing gradients only
    through inputs that need them: the backbone's summed embeddings are made to, for adapters on frozen tables."""
    from torch_xla.utils.checkpoint import checkpoint

    model.transformer.checkpoint_function = model.depformer.checkpoint_function = checkpoint
    model.transformer.text_embed.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))


def _pretrained(cfg: ModelConfig) -> str:
    if cfg.pretrained is None:
        raise ConfigError("model.family=dia2 needs model.pretrained: a Dia2 folder or hub id (nari-labs/Dia2-1B)")
    return cfg.pretrained


def _config(model: torch.nn.Module):
    """The Dia2 config of a model as training holds it (plain, with adapters, or wrapped)."""
    while not isinstance(model, Dia2Model):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.module
    return model.config


FAMILY = Dia2Family()
