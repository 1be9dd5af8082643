"""Dia2's training loss: masked cross-entropy in fp32 over its heads, weighted, normalised by the weight of the
targets that count.

Heads, in order: the action (pad or new word), codebook 0 (the backbone's head), codebooks 1..N-1 (the
depformer's stages). Default weights, and why:

- **codebook 0: 4.** Mimi's first codebook is its semantic one (distilled from a speech model): it carries the
  words and the voice, the later codebooks the acoustic detail. Dia's own recipe weighs its first codebook 4 to
  1 for the same reason (`train.codebook_weights`); moshi-finetune, training the same Mimi + depformer family,
  multiplies its first codebook's loss too.
- **every other codebook: 1.**
- **action: 1, a pad action 0.5.** The action head decides when each word starts, and so the timing of the
  whole utterance; most frames' action is pad, which moshi-finetune also halves for its text padding, so the
  rarer new-word frames are not drowned out.

Normalising by the targets' total weight (summed over a whole accumulation window by the caller, as the Dia path
does) keeps a micro-batch of few targets from counting as much as one of many.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dia_tpu.families.dia2.model import Dia2Logits
from dia_tpu.families.dia2.script import PAD_ACTION
from dia_tpu.families.heads import LossParts

FIRST_CODEBOOK_WEIGHT = 4.0


@dataclass(frozen=True)
class HeadWeights:
    action: float = 1.0
    pad_action: float = 0.5  # multiplies `action` where the target is pad
    codebooks: tuple[float, ...] = ()  # one per codebook; empty: 4 for the first, 1 for the others

    def per_codebook(self, codebooks: int) -> list[float]:
        if self.codebooks:
            return list(self.codebooks)
        return [FIRST_CODEBOOK_WEIGHT] + [1.0] * (codebooks - 1)


def target_weights(
    actions: torch.Tensor, action_mask: torch.Tensor, audio_mask: torch.Tensor, weights: HeadWeights
) -> torch.Tensor:
    """Each counted target's weight [B, H, T] (zero where a mask drops it): known before the forward."""
    audio = torch.tensor(weights.per_codebook(audio_mask.shape[1]), device=audio_mask.device)
    action = torch.where(actions == PAD_ACTION, weights.action * weights.pad_action, weights.action)
    return torch.cat((action[:, None] * action_mask[:, None], audio[None, :, None] * audio_mask), dim=1)


def dia2_loss(
    logits: Dia2Logits,
    tokens: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    audio_mask: torch.Tensor,
    weights: HeadWeights = HeadWeights(),
    accuracy: bool = True,
) -> LossParts:
    """Score `logits` (of `Dia2Model`) against the batch they were computed from: tokens [B, 2 + N, T + 1],
    actions and action_mask [B, T], audio_mask [B, N, T]. Masks multiply, so shapes never depend on the data."""
    audio = tokens[:, 2:, 1:]  # [B, N, T]: each codebook's token at t + 1
    heads = [(logits.action, actions), (logits.cb0, audio[:, 0])]
    limit = logits.depth.shape[-1]
    for stage in range(logits.depth.shape[2]):
        # The depformer's logits stop below the special ids, which are never its targets (the mask holds there).
        heads.append((logits.depth[:, :, stage], audio[:, 1 + stage].clamp(max=limit - 1)))
    mask = torch.cat((action_mask[:, None], audio_mask), dim=1).float()  # [B, H, T]
    ce, correct = [], []
    for head_logits, target in heads:
        scores = head_logits.float()
        ce.append(F.cross_entropy(scores.flatten(0, 1), target.flatten(), reduction="none").view_as(target))
        if accuracy:
            correct.append(scores.argmax(-1) == target)
    ce_t = torch.stack(ce, 1) * mask
    per_target = target_weights(actions, action_mask, audio_mask, weights)
    return LossParts(
        weighted=(ce_t * per_target).sum((1, 2)),
        weight=per_target.sum((1, 2)),
        ce_sum=ce_t.sum(-1),
        correct=(torch.stack(correct, 1).float() * mask).sum(-1) if accuracy else None,
        count=mask.sum(-1),
        audio_head=1,
    )


@dataclass
class Dia2Scorer:
    """Dia2's loss as the shared loop calls it, over a collated batch (`dia_tpu.families.dia2.data`)."""

    weights: HeadWeights
    codebooks: int

    @property
    def heads(self) -> tuple[str, ...]:
        return ("action", *(f"cb{c}" for c in range(self.codebooks)))

    def __call__(self, model, batch: dict, accuracy: bool = True) -> LossParts:
        logits = model(batch["tokens"], batch["unconditional"])
        fields = (batch["tokens"], batch["actions"], batch["action_mask"], batch["audio_mask"])
        return dia2_loss(logits, *fields, self.weights, accuracy)

    def target_weight(self, batch: dict) -> torch.Tensor:
        return target_weights(batch["actions"], batch["action_mask"], batch["audio_mask"], self.weights).sum()

    def to(self, device) -> Dia2Scorer:
        return self
