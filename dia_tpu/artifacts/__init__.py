"""What dia_tpu leaves on disk and how it is read back: the run folder's layout, and `open_artifact`, the one
reader of any saved model (an export, a training checkpoint or `best/`, a LoRA run's checkpoint, a native
Nari Labs checkpoint, a hub id). Reading a weights file, in each format a run saves: `dia_tpu.artifacts.weights`.

    output.dir/
      config.yaml               the run's resolved config (absolute paths)
      checkpoints/step_N/       the whole training state (`dia_tpu.training.checkpoint`), the newest kept
      best/                     the same, at the lowest eval loss
      final/                    the export: a `from_pretrained` folder (`dia_tpu.export`), `adapter/` for LoRA
      samples/step_NNNNNN/      wavs, spectrograms and index.json of the samples generated during training
      evaluations/step_NNNNNN/  eval.audio's judged utterances: rows.jsonl and wavs (the main process's share)
      logs/                     tracker files (TensorBoard)
      .lock                     held by the run in progress (pid, host; `dia_tpu.artifacts.lock`)
      .dia_tpu.json             marks the folder as a run: what training may replace (`dia_tpu.artifacts.owner`)
      .mirror/                  saved folders waiting to be uploaded to `output.mirror` (`dia_tpu.training.mirror`)

A saved config is read with `read_saved`: types only, so a folder opens from any directory and on another
machine, whatever the paths in it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dia_tpu.artifacts.owner import NotOurs, aside
from dia_tpu.artifacts.weights import WEIGHTS_FILES, weight_names, weights_file
from dia_tpu.config import Config, ModelConfig, read_saved
from dia_tpu.console import first_line
from dia_tpu.hub import is_hub_id

# The file a run folder, checkpoint or export keeps its resolved config in.
CONFIG_FILE = "config.yaml"
# Where an export keeps a codec that is not a hub id (for example the demo's random one).
CODEC_DIR = "codec"
# Where an export of a LoRA run keeps the adapter alone (peft's adapter_config.json + weights).
ADAPTER_DIR = "adapter"
# What each sample step's folder lists: text, prompt, seed and length of every sample.
SAMPLES_INDEX = "index.json"
# A checkpoint's own training state (step, data position, best eval): JSON, so loading it runs no code.
STATE_FILE = "train_state.json"
# Written last into a finished checkpoint, with every file's size: a folder without it is never loaded.
COMPLETE_FILE = "checkpoint.json"
# A rotating checkpoint's folder name.
STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class RunFolder:
    """The folders of one run (`output.dir`)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def holding(cls, folder: str | Path) -> RunFolder:
        """The run a saved folder of it belongs to: `checkpoints/step_N`, `best/` or `final/`."""
        folder = Path(folder)
        return cls(folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def staging(self) -> Path:
        """Where saved folders wait for their upload to the mirror (hard links: they take no space)."""
        return self.root / ".mirror"

    @property
    def set_aside(self) -> Path:
        """Where incomplete checkpoints are moved, never deleted."""
        return self.checkpoints / "incomplete"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations"

    def evaluations_at(self, step: int) -> Path:
        return self.evaluations / f"step_{step:06d}"

    def samples_at(self, step: int) -> Path:
        return self.samples / f"step_{step:06d}"

    def list_checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.checkpoints.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def complete_checkpoints(self) -> list[Path]:
        """The checkpoints that were finished (`is_complete`), oldest first."""
        return [p for p in self.list_checkpoints() if is_complete(p)]


def put_in_place(building: Path, path: Path) -> None:
    """Replace `path` with the finished folder `building` by renames, so that at every moment one of the two
    is whole; then make the renames durable. The caller has proven `path` dia_tpu's (`dia_tpu.artifacts.owner`);
    a symbolic link is refused here whatever it points at."""
    if path.is_symlink():
        raise NotOurs(
            f"{path} is a symbolic link (to {os.readlink(path)}): dia_tpu replaces it by renaming folders "
            "and neither follows nor removes links; remove the link, its target is not touched"
        )
    if path.exists():
        old = aside(path, "replaced")
        path.rename(old)
        building.rename(path)
        shutil.rmtree(old)
    else:
        building.rename(path)
    sync_dir(path.parent)


# Free space below which a failed write is put down to a full disk.
_FULL = 16 * 2**20


def write_failure(err: BaseException, path: Path) -> str:
    """Why a write under `path` failed, saying so plainly when the disk is full (torch's and pyarrow's own
    messages do not)."""
    where = existing_parent(path)
    free = shutil.disk_usage(where).free
    if getattr(err, "errno", None) == errno.ENOSPC or free < _FULL:
        return f"the disk is full: {free / 2**20:.1f} MiB free on {where}; {first_line(err)}"
    return first_line(err)


def existing_parent(path: Path) -> Path:
    """The nearest folder above `path` that exists: the disk its free space is read from."""
    return next(p for p in (path.parent, *path.parents) if p.exists())


def sync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (the directory entry itself)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def mark_complete(folder: Path, step: int) -> None:
    """Flush every file of a finished checkpoint to disk, then write its completion mark: the step and every
    file with its size."""
    files = file_sizes(folder)
    for name in files:
        with open(folder / name, "rb") as handle:
            os.fsync(handle.fileno())
    with open(folder / COMPLETE_FILE, "w") as handle:
        handle.write(mark_text(step, files))
        handle.flush()
        os.fsync(handle.fileno())
    sync_dir(folder)


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` except its completion mark, by path relative to it (with /), with its size."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / COMPLETE_FILE)
    return {file.relative_to(folder).as_posix(): file.stat().st_size for file in files}


def mark_text(step: int, files: dict[str, int]) -> str:
    return json.dumps({"step": step, "files": files}, indent=2) + "\n"


def completion_mark(folder: Path) -> dict | None:
    """The mark of a finished checkpoint ({"step", "files": {name: size}}), or None when `folder` is not one:
    no mark, or a file it lists is missing or has another size."""
    try:
        text = (folder / COMPLETE_FILE).read_text()
    except OSError:
        return None
    return valid_mark(text, lambda name: (folder / name).stat().st_size)


def valid_mark(text: str | bytes, size_of) -> dict | None:
    """A completion mark read from `text`, when every file it lists has its size (`size_of(name)`, which may
    raise OSError for a missing file); None otherwise. Local folders and mirrors check their marks with it."""
    try:
        mark = json.loads(text)
        whole = all(size_of(name) == size for name, size in mark["files"].items())
        return mark if whole and isinstance(mark["step"], int) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_complete(folder: Path) -> bool:
    return completion_mark(folder) is not None


Kind = Literal["export", "checkpoint", "lora_checkpoint", "native", "hub"]


@dataclass(frozen=True)
class Artifact:
    """A saved model as `open_artifact` found it."""

    source: str  # as given: a path or a hub id
    kind: Kind
    # export: a `from_pretrained` folder; checkpoint: a training state (also `from_pretrained`-loadable);
    # lora_checkpoint: a LoRA run's training state, holding the trained weights only; native: a Nari Labs
    # checkpoint; hub: a repository id, read by transformers.
    config: Config | None  # the run's saved config.yaml, when the folder has one
    weights: Path | None  # the model's weights file, when it is local
    codec: ModelConfig  # what `build_codec` needs to build this model's codec

    @property
    def path(self) -> Path:
        return Path(self.source)


def open_artifact(source: str | Path) -> Artifact:
    """Find out what `source` is, read its saved config once, and locate its weights and its codec.

    A local folder without a model in it is a FileNotFoundError naming what is missing.
    """
    from dia_tpu.model.native_files import is_native_source, native_weights_file

    name, path = str(source), Path(source)
    if not path.exists():
        if is_hub_id(name):
            return Artifact(name, "hub", None, None, ModelConfig())
        raise FileNotFoundError(f"model not found: {name} (neither a file or folder nor a hub id like org/name)")
    if is_native_source(path):
        return Artifact(name, "native", None, native_weights_file(path), ModelConfig())
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a model folder or a native checkpoint (.pth, .safetensors)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not an export, a checkpoint or a native checkpoint")
    config = read_saved(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    weights = weights_file(path)
    if weights is None:
        raise FileNotFoundError(f"{path} holds no model weights (one of {', '.join(WEIGHTS_FILES)})")
    if config is not None and config.model.lora.rank and any("lora_" in key for key in weight_names(weights)):
        kind: Kind = "lora_checkpoint"
    else:
        kind = "checkpoint" if is_checkpoint(path) else "export"
    return Artifact(name, kind, config, weights, _codec_of(path, config))


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a training state that training can resume from (Accelerate's optimizer file, or
    a sharded one's folder)."""
    return any(folder.glob("optimizer*.bin")) or (folder / "optimizer_0").is_dir()


def _codec_of(folder: Path, config: Config | None) -> ModelConfig:
    """The codec saved inside an export, else the one its run's config names, else its processor's."""
    if (folder / CODEC_DIR / "config.json").is_file():
        return ModelConfig(codec=str((folder / CODEC_DIR).resolve()))
    if config is not None:
        return config.model
    processor = folder / "processor_config.json"
    if processor.is_file():
        codec = json.loads(processor.read_text())["audio_tokenizer"]["audio_tokenizer_name_or_path"]
        return ModelConfig(codec=codec)
    return ModelConfig()
