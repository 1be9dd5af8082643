"""Where training stands (`TrainState`): the optimizer step, the data position and the best evaluation so far.

Plain data, changed in the open: the loop advances the step and the data position, evaluation records its
score, and a checkpoint saves it as JSON and `load_checkpoint` returns the one it read.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dia_tpu.errors import UserError


@dataclass
class TrainState:
    """Where training stands, in optimizer steps and data position; saved and restored with each checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed on this process
    best_score: float = math.inf  # lowest eval.select_by score so far (the eval loss by default), and its step
    best_step: int = 0
    evals_since_best: int = 0  # evaluations in a row without an improvement (early stopping counts these)

    def record_eval(self, score: float, min_delta: float) -> bool:
        """Track the best score; True when `score` improves on it by more than `min_delta`."""
        if score < self.best_score - min_delta:
            self.best_score, self.best_step, self.evals_since_best = score, self.step, 0
            return True
        self.evals_since_best += 1
        return False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> TrainState:
        try:
            saved = json.loads(path.read_text())
            if "best_loss" in saved:  # written before eval.select_by, when the score was the eval loss
                saved.setdefault("best_score", saved.pop("best_loss"))
            return cls(**{f.name: type(getattr(cls(), f.name))(saved[f.name]) for f in fields(cls)})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a dia_tpu training state ({err})") from err
