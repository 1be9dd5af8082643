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


@dataclass(frozen=True)
class HeadWeights:
    action: float = 1.0
    pad_action: float = 0.5  # multiplies `action` where the target is pad
    first_codebook: float = 4.0
    codebook: float = 1.0  # each depformer codebook


@dataclass
class Dia2LossParts:
    weighted_sum: torch.Tensor  # scalar: the weighted cross-entropy summed over counted targets
    weight: torch.Tensor  # scalar: the counted targets' total weight, the denominator
    ce_sum: torch.Tensor  # [B, H]: unweighted cross-entropy per item and head (action, codebooks 0..N-1)
    correct: torch.Tensor  # [B, H]: argmax hits
    count: torch.Tensor  # [B, H]: counted targets


def dia2_loss(
    logits: Dia2Logits,
    tokens: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    audio_mask: torch.Tensor,
    weights: HeadWeights = HeadWeights(),
) -> Dia2LossParts:
    """Score `logits` (of `Dia2Model`) against the batch they were computed from: tokens [B, 2 + N, T + 1],
    actions and action_mask [B, T], audio_mask [B, N, T]. Masks multiply, so shapes never depend on the data."""
    audio = tokens[:, 2:, 1:]  # [B, N, T]: each codebook's token at t + 1
    heads = [(logits.action, actions, action_mask), (logits.cb0, audio[:, 0], audio_mask[:, 0])]
    limit = logits.depth.shape[-1]
    for stage in range(logits.depth.shape[2]):
        # The depformer's logits stop below the special ids, which are never its targets (the mask holds there).
        target = audio[:, 1 + stage].clamp(max=limit - 1)
        heads.append((logits.depth[:, :, stage], target, audio_mask[:, 1 + stage]))
    ce, correct, counted = [], [], []
    for head_logits, target, mask in heads:
        scores = head_logits.float()
        loss = F.cross_entropy(scores.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        mask = mask.float()
        ce.append(loss * mask)
        correct.append((scores.argmax(-1) == target).float() * mask)
        counted.append(mask)
    ce_t, correct_t, count_t = torch.stack(ce, 1), torch.stack(correct, 1), torch.stack(counted, 1)  # [B, H, T]
    scale = torch.full((ce_t.shape[1],), weights.codebook, device=ce_t.device)
    scale[0], scale[1] = weights.action, weights.first_codebook
    per_target = scale[None, :, None].expand_as(ce_t).clone()
    per_target[:, 0] = torch.where(actions == PAD_ACTION, weights.action * weights.pad_action, weights.action)
    return Dia2LossParts(
        weighted_sum=(ce_t * per_target).sum(),
        weight=(count_t * per_target).sum(),
        ce_sum=ce_t.sum(-1),
        correct=correct_t.sum(-1),
        count=count_t.sum(-1),
    )
