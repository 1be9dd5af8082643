"""`dia-tpu push` of a Dia2 export: the repository upstream's `Dia2.from_repo` loads (the export as it is, in
upstream's format), the run's public config, a few samples and a model card saying how to load it with upstream's
package and with dia_tpu. A Dia2 export is pushed whole: `--adapter` and `--native` are Dia's forms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dia_tpu.artifacts import CONFIG_FILE, RunFolder
from dia_tpu.artifacts.opening import is_checkpoint
from dia_tpu.artifacts.owner import MARK_FILE
from dia_tpu.config import Config, read_saved
from dia_tpu.errors import UserError
from dia_tpu.families.dia2.assets import ASSETS_FILE
from dia_tpu.families.dia2.export import MIMI_DIR
from dia_tpu.publish import card_values, check_target, copy_samples, render_card
from dia_tpu.publish.paths import check_no_local_paths, write_public_config


def upload_dia2(source: Path, out: Path, repo_id: str, adapter: bool, license: str | None, native: str | None) -> Path:
    """What `push` uploads for the Dia2 export `source`, written into `out` (new); returns `out`."""
    if adapter or native:
        flag = "--adapter" if adapter else "--native"
        raise UserError(f"{flag}: a Dia2 export is pushed whole, in upstream's format (what Dia2.from_repo loads)")
    if is_checkpoint(source) or not (source / CONFIG_FILE).is_file():
        raise UserError(
            f"--model {source}: a Dia2 model but not a dia_tpu export (a run's final/, or `dia-tpu export` of a "
            "checkpoint); export the checkpoint first"
        )
    cfg = read_saved(source / CONFIG_FILE)
    check_target(repo_id, out)
    out.mkdir(parents=True)
    for entry in source.iterdir():
        # The mark says the folder is this machine's export, which the repository is not; an adapter is Dia's form.
        if entry.is_file() and entry.name not in (MARK_FILE, CONFIG_FILE):
            shutil.copy2(entry, out / entry.name)
        elif entry.is_dir() and entry.name == MIMI_DIR:
            shutil.copytree(entry, out / entry.name)
    write_public_config(out, cfg)
    run = RunFolder.holding(source)
    card = dia2_card(cfg, run, out, repo_id, copy_samples(run, out), license)
    (out / "README.md").write_text(card, encoding="utf-8")
    check_no_local_paths(out, source)
    return out


def dia2_card(cfg: Config, run: RunFolder, out: Path, repo_id: str, samples: list[str], license: str | None) -> str:
    tags = ["dia2", "lora" if cfg.model.lora.rank else "fine-tuned"]
    values = card_values(cfg, run, repo_id, samples, license, tags, None)
    if cfg.model.lora.rank:
        values["trained"] += ", merged"
    assets = json.loads((out / ASSETS_FILE).read_text()) if (out / ASSETS_FILE).is_file() else {}
    return render_card(
        "model_card_dia2.md",
        **values,
        tokenizer_here=(out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file(),
        mimi_folder=MIMI_DIR if (out / MIMI_DIR).is_dir() and "mimi" not in assets else None,
    )
