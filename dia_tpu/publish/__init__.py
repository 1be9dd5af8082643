"""`dia-tpu push`: an export made into a Hugging Face Hub model repository: the transformers-format model (or a
LoRA run's adapter alone) with its processor and generation config, a few of the run's samples, and a model card
written from what the run left behind (its config, the prepared data's manifest, its logged evaluations). A Dia2
export goes up in upstream's format (`dia_tpu.publish.dia2`).

`upload_folder` writes the repository's files into a folder (all `--dry-run` does); `push` uploads such a folder
with `huggingface_hub.HfApi` (`create_repo`, then `upload_folder`), which reads the token that `hf auth login`
saved or `HF_TOKEN`.

Nothing of the training machine goes up: the repository's config.yaml has its URLs' credentials redacted and each
absolute local path cut to its last component (`/home/u/runs/codes` -> `codes`), the card and the adapter's config
name a local base model by its folder's name, the export's ownership mark stays behind, and a text file that still
names the export's folder stops the push before anything is uploaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from dia_tpu.artifacts import ADAPTER_DIR, CODEC_DIR, CONFIG_FILE, RunFolder, open_artifact
from dia_tpu.artifacts.owner import MARK_FILE
from dia_tpu.config import Config
from dia_tpu.console import first_line
from dia_tpu.data.shards import MANIFEST_FILE, read_prepare_info
from dia_tpu.errors import UserError
from dia_tpu.evaluation.judge import AUDIO_FIGURES
from dia_tpu.hub import HubError, is_hub_id, transport_errors
from dia_tpu.publish.paths import check_no_local_paths, local_name, write_public_config

# How many of the run's latest samples go with the model, linked from the card.
CARD_SAMPLES = 3
# Dia's own license, which a fine-tune of Nari Labs' weights inherits.
NARI_LICENSE = "apache-2.0"

# The card's words for train.mixed_precision (`auto` chose per machine at the start of each run).
PRECISION_WORDS = {"no": "fp32", "auto": "bf16 where the device runs it natively, else fp32 (auto)"}


def upload_folder(
    model: str | Path,
    out: str | Path,
    repo_id: str,
    adapter: bool = False,
    license: str | None = None,
    native: str | None = None,
) -> Path:
    """Write what `push` uploads for the export `model` into `out` (which must not exist): the model, or with
    `adapter` the LoRA adapter alone, or with `native` (a schema, "v0.1" or "0626") a native Nari Labs
    checkpoint; the processor, generation config and the run's config.yaml; up to CARD_SAMPLES of the run's
    latest samples; and README.md, the model card. Returns `out`."""
    source, out = Path(model), Path(out)
    artifact = open_artifact(source)
    if artifact.kind == "dia2":
        from dia_tpu.publish.dia2 import upload_dia2

        return upload_dia2(source, out, repo_id, adapter, license, native)
    if artifact.kind != "export" or artifact.config is None:
        raise UserError(
            f"--model {source}: not a dia_tpu export (a run's final/, or `dia-tpu export` of a "
            f"checkpoint); export the checkpoint first"
        )
    check_target(repo_id, out)
    cfg = artifact.config
    if adapter and not (source / ADAPTER_DIR).is_dir():
        raise UserError(f"--adapter: {source} holds no {ADAPTER_DIR}/ (only a LoRA run's export has one)")
    if adapter and native:
        raise UserError("--adapter and --native: a native checkpoint is a whole model; choose one")
    out.mkdir(parents=True)
    if native:
        from dia_tpu.model.load import load_model
        from dia_tpu.model.native_files import save_native

        save_native(load_model(artifact), out, schema=native)
        shutil.copy2(source / CONFIG_FILE, out / CONFIG_FILE)
    elif adapter:
        for file in (source / ADAPTER_DIR).iterdir():
            shutil.copy2(file, out / file.name)
        _point_adapter_at_base(out)
    else:
        for file in source.iterdir():
            # The mark says the folder is this machine's export, which the repository is not.
            if file.is_file() and file.name != MARK_FILE:
                shutil.copy2(file, out / file.name)
        if (source / CODEC_DIR).is_dir():
            shutil.copytree(source / CODEC_DIR, out / CODEC_DIR)
        _point_processor_at_codec(out, cfg)
    write_public_config(out, cfg)
    run = RunFolder.holding(source)
    card = model_card(cfg, run, repo_id, adapter, copy_samples(run, out), license, native)
    (out / "README.md").write_text(card, encoding="utf-8")
    check_no_local_paths(out, source)
    return out


def check_target(repo_id: str, out: Path) -> None:
    if not is_hub_id(repo_id, base=Path("/nonexistent")):
        raise UserError(f"--repo {repo_id!r}: a Hub repository id looks like org/name")
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder to write the repository into")


def push_export(
    model: str | Path,
    repo_id: str,
    private: bool = False,
    adapter: bool = False,
    license: str | None = None,
    native: str | None = None,
) -> str:
    """`upload_folder` into a temporary folder, then `push` it; returns the repository's URL."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = upload_folder(model, Path(tmp) / "repo", repo_id, adapter, license, native)
        return push(folder, repo_id, private)


def check_token() -> None:
    """Refuse, before any work, a push that would fail for want of a Hub token."""
    from huggingface_hub import get_token

    if get_token() is None:
        raise HubError("train.push_to_hub: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create `repo_id` on the Hub (if it is not there) and upload `folder` to it; returns the repository's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload a fine-tune made with dia_tpu",
        )
    except (HfHubHTTPError, OSError, *transport_errors()) as err:
        raise HubError(
            f"push to {repo_id}: {first_line(err)} (check the network, log in with `hf auth login` or "
            "set HF_TOKEN; `--dry-run DIR` writes the files without uploading)"
        ) from err
    return str(url)


def model_card(
    cfg: Config,
    run: RunFolder,
    repo_id: str,
    adapter: bool,
    samples: list[str],
    license: str | None = None,
    native: str | None = None,
) -> str:
    """README.md for the repository: the Hub's metadata header, then what the model is and how to use it, from
    the package's template (templates/model_card.md)."""
    from dia_tpu.model.native_files import SAVE_NAMES

    tags = ["dia", "lora" if adapter else "fine-tuned", *(["native"] if native else [])]
    library = None if native else "peft" if adapter else "transformers"
    values = card_values(cfg, run, repo_id, samples, license, tags, library)
    codec = cfg.model.codec
    return render_card(
        "model_card.md",
        **values,
        adapter=adapter,
        native=native,
        native_weights=SAVE_NAMES[native] if native else None,
        # Only a whole model in transformers' layout carries the codec, and only one that is not on the Hub.
        codec_folder=None if adapter or native or (codec and is_hub_id(codec)) else CODEC_DIR,
    )


def card_values(
    cfg: Config, run: RunFolder, repo_id: str, samples: list[str], license: str | None, tags: list, library: str | None
) -> dict:
    """What every family's card says: the Hub's metadata header, the base, the data, the training and its results."""
    from huggingface_hub import ModelCardData

    base, lora = cfg.model.pretrained, cfg.model.lora
    data = data_summary(cfg)
    metadata = ModelCardData(
        license=license or base_license(base),
        base_model=base if base and is_hub_id(base) else None,
        language=data["languages"] or None,
        library_name=library,
        pipeline_tag="text-to-speech",
        tags=["text-to-speech", "dia_tpu", *tags],
    )
    return {
        "card_data": metadata.to_yaml(),
        "name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "base": local_name(base) if base else None,  # a local base folder by its name: the card is public
        "aligner": data["aligner"],
        "hours": data["hours"],
        "clips": data["items"],
        "source": data["source"],
        "speakers": data["speakers"],
        "languages": data["languages"],
        "trained": f"LoRA rank {lora.rank} ({', '.join(lora.targets)})" if lora.rank else "all weights trained",
        "train": cfg.train,
        "precision": PRECISION_WORDS.get(cfg.train.mixed_precision, cfg.train.mixed_precision),
        "data": cfg.data,
        "results": results_lines(run),
        "samples": [(Path(sample).stem, sample) for sample in samples],
    }


def render_card(template: str, **values) -> str:
    """The package's card `template` (in templates/) rendered, and read back as the Hub reads a card: a header that
    would not parse there fails here."""
    import jinja2
    from huggingface_hub import ModelCard

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dia_tpu", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["python"] = repr  # a string as Python source writes it, for the code blocks
    return ModelCard(environment.get_template(template).render(**values)).content


def base_license(base: str | None) -> str:
    """The license of the model this one was trained from: Nari Labs' Dia is Apache-2.0; a local base folder's
    card names its own; another hub model's card is read from the Hub. Without a base, "other"."""
    from huggingface_hub import ModelCard

    if base is None:
        return "other"
    if base.startswith("nari-labs/"):
        return NARI_LICENSE
    card = Path(base) / "README.md"
    try:
        found = ModelCard.load(card if card.is_file() else base).data.license
    except (OSError, ValueError) as err:
        raise HubError(f"model.pretrained {base}: its license could not be read ({err}); give --license") from err
    return found or "other"


def data_summary(cfg: Config) -> dict:
    """Hours and clips from the prepared dataset's manifest; speakers and languages from its columns."""
    from datasets import load_from_disk

    folder = Path(cfg.data.dataset)
    manifest = read_prepare_info(folder) if (folder / MANIFEST_FILE).is_file() else {}
    summary = {
        "hours": manifest.get("audio_hours", 0.0),
        "items": manifest.get("kept", 0),
        "source": Path(str(manifest.get("source", folder))).name,
        "aligner": manifest.get("aligner"),
        "speakers": 0,
        "languages": [],
    }
    if (folder / "dataset_info.json").is_file():
        table = load_from_disk(str(folder))
        if "speaker" in table.column_names:
            summary["speakers"] = len({s for s in table["speaker"] if s})
        if "language" in table.column_names:
            summary["languages"] = sorted({code for code in table["language"] if code})
    return summary


def results_lines(run: RunFolder) -> list[str]:
    """The card's results: last step, final and best eval loss, and the automatic evaluation's last figures."""
    from dia_tpu.report import read_scalars

    scalars = read_scalars(run.logs)
    lines = []
    if steps := scalars.get("train/loss"):
        lines.append(f"{max(steps)} optimizer steps")
    if evals := scalars.get("eval/loss"):
        last, best = max(evals), min(evals, key=evals.get)
        lines.append(f"eval loss {evals[last]:.4f} at the end, best {evals[best]:.4f} at step {best}")
    for key, name, fmt in AUDIO_FIGURES:
        if values := scalars.get(f"audio/{key}"):
            step = max(values)
            lines.append(f"{name}: {values[step]:{fmt}} (automatic evaluation at step {step})")
    return lines


def copy_samples(run: RunFolder, out: Path) -> list[str]:
    """The latest sample step's wavs (up to CARD_SAMPLES) as samples/NAME.wav; their paths in the repo."""
    steps = sorted(p for p in run.samples.glob("step_*") if p.is_dir()) if run.samples.is_dir() else []
    if not steps:
        return []
    wavs = sorted(steps[-1].glob("*.wav"))[:CARD_SAMPLES]
    (out / "samples").mkdir()
    for wav in wavs:
        shutil.copy2(wav, out / "samples" / wav.name)
    return [f"samples/{wav.name}" for wav in wavs]


def _point_processor_at_codec(out: Path, cfg: Config) -> None:
    """An export's processor names its codec by absolute path when the codec is a local folder saved inside it;
    in the repository that is the `codec/` folder beside it, or the codec's hub id."""
    file = out / "processor_config.json"
    if not file.is_file():
        return
    processor = json.loads(file.read_text())
    codec = cfg.model.codec
    tokenizer = processor.get("audio_tokenizer", {})
    tokenizer["audio_tokenizer_name_or_path"] = codec if codec and is_hub_id(codec) else CODEC_DIR
    file.write_text(json.dumps(processor, indent=2) + "\n")


def _point_adapter_at_base(out: Path) -> None:
    """peft names the base model by the path it was loaded from; a local base folder is named by its name here, as
    the card does (loading the adapter takes the base model itself, not this name)."""
    file = out / "adapter_config.json"
    if not file.is_file():
        return
    adapter = json.loads(file.read_text())
    if isinstance(adapter.get("base_model_name_or_path"), str):
        adapter["base_model_name_or_path"] = local_name(adapter["base_model_name_or_path"])
        file.write_text(json.dumps(adapter, indent=2) + "\n")
