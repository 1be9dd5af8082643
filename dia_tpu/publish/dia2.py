"""`dia-tpu push` of a Dia2 export: the repository upstream's `Dia2.from_repo` loads (the export as it is, in
upstream's format), the run's public config, a few samples and a model card saying how to load it with upstream's
package and with dia_tpu. A Dia2 export is pushed whole: `--adapter` and `--native` are Dia's forms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from dia_tpu.artifacts import CONFIG_FILE, RunFolder
from dia_tpu.artifacts.opening import is_checkpoint
from dia_tpu.artifacts.owner import MARK_FILE
from dia_tpu.config import Config, read_saved
from dia_tpu.errors import UserError
from dia_tpu.hub import is_hub_id
from dia_tpu.publish.paths import check_no_local_paths, local_name, public_config


def upload_dia2(source: Path, out: Path, repo_id: str, adapter: bool, license: str | None, native: str | None) -> Path:
    """What `push` uploads for the Dia2 export `source`, written into `out` (new); returns `out`."""
    from dia_tpu import publish

    if adapter or native:
        flag = "--adapter" if adapter else "--native"
        raise UserError(f"{flag}: a Dia2 export is pushed whole, in upstream's format (what Dia2.from_repo loads)")
    if is_checkpoint(source) or not (source / CONFIG_FILE).is_file():
        raise UserError(
            f"--model {source}: a Dia2 model but not a dia_tpu export (a run's final/, or `dia-tpu export` of a "
            "checkpoint); export the checkpoint first"
        )
    cfg = read_saved(source / CONFIG_FILE)
    publish.check_target(repo_id, out)
    out.mkdir(parents=True)
    for entry in source.iterdir():
        # The mark says the folder is this machine's export, which the repository is not; an adapter is Dia's form.
        if entry.is_file() and entry.name not in (MARK_FILE, CONFIG_FILE):
            shutil.copy2(entry, out / entry.name)
        elif entry.is_dir() and entry.name == "mimi":
            shutil.copytree(entry, out / entry.name)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(public_config(cfg), sort_keys=False), encoding="utf-8")
    run = RunFolder.holding(source)
    card = dia2_card(cfg, run, out, repo_id, publish.copy_samples(run, out), license)
    (out / "README.md").write_text(card, encoding="utf-8")
    check_no_local_paths(out, source)
    return out


def dia2_card(cfg: Config, run: RunFolder, out: Path, repo_id: str, samples: list[str], license: str | None) -> str:
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    from dia_tpu import publish

    base = cfg.model.pretrained
    data = publish.data_summary(cfg)
    metadata = ModelCardData(
        license=license or publish.base_license(base),
        base_model=base if base and is_hub_id(base) else None,
        language=data["languages"] or None,
        pipeline_tag="text-to-speech",
        tags=["text-to-speech", "dia2", "dia_tpu", "lora" if cfg.model.lora.rank else "fine-tuned"],
    )
    assets = json.loads((out / "dia2_assets.json").read_text()) if (out / "dia2_assets.json").is_file() else {}
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dia_tpu", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["python"] = repr
    lora = cfg.model.lora
    text = environment.get_template("model_card_dia2.md").render(
        card_data=metadata.to_yaml(),
        name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base=local_name(base) if base else None,
        tokenizer_here=(out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file(),
        mimi_folder="mimi" if (out / "mimi").is_dir() and "mimi" not in assets else None,
        aligner=data.get("aligner"),
        hours=data["hours"],
        clips=data["items"],
        source=data["source"],
        speakers=data["speakers"],
        languages=data["languages"],
        trained=f"LoRA rank {lora.rank} ({', '.join(lora.targets)}), merged" if lora.rank else "all weights trained",
        train=cfg.train,
        precision=publish.PRECISION_WORDS.get(cfg.train.mixed_precision, cfg.train.mixed_precision),
        data=cfg.data,
        results=publish.results_lines(run),
        samples=[(Path(sample).stem, sample) for sample in samples],
    )
    return ModelCard(text).content
