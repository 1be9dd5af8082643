"""The run folder's layout (`output.dir`): where a run keeps its config, checkpoints, best/, final/, samples,
evaluations and logs, and the names of the files inside them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dia_tpu.artifacts.marks import is_complete

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
