"""What a family's loss gives the shared loop: per-item sums for every head it scores, and the one interface
(`Scorer`) training, evaluation and the benchmark call it through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class LossParts:
    """One batch's loss, per item and head. Heads are what the family scores (Dia: each codebook; Dia2: the
    action, then each codebook). Per-item rows let evaluation gather exact sums across processes."""

    weighted: torch.Tensor  # [B]: the weighted cross-entropy summed over each item's counted targets
    weight: torch.Tensor  # [B]: the total weight of those targets (the loss's denominator)
    ce_sum: torch.Tensor  # [B, H]: unweighted cross-entropy summed over time
    correct: torch.Tensor | None  # [B, H]: argmax hits; None when not asked for (a training step)
    count: torch.Tensor  # [B, H]: counted targets
    audio_head: int = 0  # the head whose counted targets are the audio frames (for throughput)

    @property
    def weighted_sum(self) -> torch.Tensor:
        return self.weighted.sum()

    @property
    def total_weight(self) -> torch.Tensor:
        return self.weight.sum()

    @property
    def frames(self) -> torch.Tensor:
        return self.count[:, self.audio_head].sum()


class Scorer(Protocol):
    """A family's loss over a collated batch, with the weights the config gave it."""

    heads: tuple[str, ...]  # what each head is called in metrics: eval/loss_<head>, eval/acc_<head>

    def __call__(self, model: torch.nn.Module, batch: dict, accuracy: bool = True) -> LossParts:
        """Forward `batch` through `model` and score it."""

    def target_weight(self, batch: dict) -> torch.Tensor:
        """The batch's total target weight, known before the forward (the step's normaliser)."""

    def to(self, device: torch.device | str) -> Scorer:
        """The scorer with its weights on `device`."""
