"""Where a Dia2 model comes from: a local folder in upstream's format, or a hub repository of one, fetched as
that folder (its config, weights, asset manifest and tokenizer files; nothing else)."""

from __future__ import annotations

from pathlib import Path

from dia_tpu.hub import from_hub, is_hub_id

# What a Dia2 repository holds that dia_tpu reads: upstream's files and a tokenizer kept beside them.
REPOSITORY_FILES = [
    "config.json",
    "model.safetensors",
    "dia2_assets.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "mimi/*",  # a codec that is not a Hub model of its own, saved beside the model (`dia-tpu push` of a demo)
]


def source_config(source: str) -> Path:
    """The config.json of `source`, alone: a local folder's, or the hub repository's file (no weights)."""
    if not is_hub_id(source):
        return Path(source) / "config.json"
    from huggingface_hub import hf_hub_download

    with from_hub("model.pretrained", source, "a Dia2 folder (config.json and model.safetensors)"):
        return Path(hf_hub_download(source, "config.json"))


def source_folder(source: str) -> Path:
    """The local folder of `source`: itself, or the hub repository's files in the local cache."""
    if not is_hub_id(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    with from_hub("model.pretrained", source, "a Dia2 folder (config.json and model.safetensors)"):
        return Path(snapshot_download(source, allow_patterns=REPOSITORY_FILES))
