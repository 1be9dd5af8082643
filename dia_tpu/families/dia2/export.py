"""A trained Dia2 written in upstream's format: `config.json` and `model.safetensors` (upstream's names, its
safetensors metadata kept), the tokenizer's files beside them when it was a local one, a local Mimi codec in
`mimi/`, `dia2_assets.json` naming what upstream's `Dia2.from_repo` reads, `generation_config.json` (the sampling
the run's samples used: `run_sampling`), the run's `config.yaml`, and for a
LoRA fine-tune the adapter alone in `adapter/` (peft's format) beside the model with it folded in.

A tokenizer named by hub id stays named in `assets.tokenizer`; a local one is saved at the folder's root with
`assets.tokenizer` cleared, which is where upstream looks in a repository (the repository's own id) and where
dia_tpu looks in a folder. Nothing is written outside the export, which is built beside its place and renamed
into it, as Dia's is.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft
import torch
from transformers import AutoTokenizer, MimiModel

from dia_tpu.artifacts import ADAPTER_DIR, CONFIG_FILE
from dia_tpu.artifacts.owner import EXPORT, check_replaceable
from dia_tpu.config import GENERATION_FILE, Config, run_sampling
from dia_tpu.export import building_beside, save_adapter
from dia_tpu.families.dia2.adapters import merged
from dia_tpu.families.dia2.assets import ASSETS_FILE, DEFAULT_MIMI, manifest_entry, resolve, tokenizer_source
from dia_tpu.families.dia2.files import WEIGHTS_FILE, weights_metadata, write_model
from dia_tpu.hub import is_hub_id

MIMI_DIR = "mimi"


def export_dia2(model: torch.nn.Module, cfg: Config, source: Path, out_dir: Path) -> None:
    """Write `model` (plain or with adapters), fine-tuned from the upstream-format folder `source`, to `out_dir`
    (new, empty or an earlier export)."""
    check_replaceable(out_dir, EXPORT, "the export folder")
    with building_beside(out_dir) as building:
        if isinstance(model, peft.PeftModel):
            save_adapter(model, building / ADAPTER_DIR)
        plain = merged(model)
        metadata = weights_metadata(source / WEIGHTS_FILE) if (source / WEIGHTS_FILE).is_file() else None
        write_model(plain, building, metadata)
        raw = copy.deepcopy(plain.config.raw)
        assets = raw.setdefault("assets", {})
        tokenizer = tokenizer_source(source, plain.config)
        if is_hub_id(tokenizer):
            assets["tokenizer"] = tokenizer
        else:
            AutoTokenizer.from_pretrained(tokenizer).save_pretrained(building)
            assets["tokenizer"] = None
            raw.get("data", {}).pop("tokenizer_path", None)
        manifest = {"config": "config.json", "weights": WEIGHTS_FILE, "tokenizer": assets["tokenizer"]}
        mimi = resolve(source, plain.config.mimi or manifest_entry(source, "mimi") or DEFAULT_MIMI)
        if is_hub_id(mimi):
            manifest["mimi"] = mimi
        else:
            MimiModel.from_pretrained(mimi).save_pretrained(building / MIMI_DIR)
            assets["mimi"] = MIMI_DIR
        (building / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        (building / ASSETS_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        # The run's sampling, which generate, evaluate and the studio default to for this folder.
        (building / GENERATION_FILE).write_text(json.dumps(run_sampling(cfg, "dia2"), indent=2) + "\n")
        cfg.save(building / CONFIG_FILE)
