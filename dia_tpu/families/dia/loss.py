"""Dia's loss: per-codebook masked cross-entropy in fp32, shared by training, evaluation and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dia_tpu.data.batching import IGNORE_INDEX
from dia_tpu.errors import UserError
from dia_tpu.families.heads import LossParts


def codebook_weights(weights: list[float], channels: int) -> torch.Tensor:
    """Config weights as a tensor; empty means 4.0 on the first codebook and 1.0 elsewhere."""
    if not weights:
        weights = [4.0] + [1.0] * (channels - 1)
    if len(weights) != channels:
        raise UserError(f"train.codebook_weights has {len(weights)} entries but the model has {channels} codebooks")
    return torch.tensor(weights, dtype=torch.float32)


def target_weight(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Total weight of the counted targets in `labels` [B, T, C]: the denominator of the loss."""
    return ((labels != IGNORE_INDEX).float() * weights.to(labels.device)).sum()


def codebook_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, accuracy: bool = True
) -> LossParts:
    """Masked cross-entropy per codebook.

    logits: [B*C, T, V] from DiaForConditionalGeneration (row b*C + c is sample b, codebook c).
    labels: [B, T, C] with IGNORE_INDEX where no target counts (PAD and BOS); EOS is a target.
    weights: [C] loss weight per codebook.
    accuracy: also count argmax hits (an argmax over every logit: evaluation wants it, a training step does not).
    The mask multiplies rather than indexes, so shapes never depend on the data.
    """
    size, steps, channels = labels.shape
    targets = labels.permute(0, 2, 1)  # [B, C, T], matching the logits' channel-major rows
    mask = (targets != IGNORE_INDEX).float()
    logits = logits.float().reshape(size, channels, steps, -1)
    # Over rows of the vocabulary as they lie in memory: cross-entropy on the [B, V, C, T] view would copy every
    # logit to that layout and take its softmax across strided memory (a fifth of a CPU training step).
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, vocab), targets.clamp(min=0).reshape(-1), reduction="none")
    ce = ce.view(size, channels, steps) * mask
    ce_sum, count, weights = ce.sum(-1), mask.sum(-1), weights.to(ce.device)
    return LossParts(
        weighted=(ce_sum * weights).sum(-1),
        weight=(count * weights).sum(-1),
        ce_sum=ce_sum,
        correct=((logits.argmax(-1) == targets).float() * mask).sum(-1) if accuracy else None,
        count=count,
    )


def batch_loss(model, batch: dict, weights: torch.Tensor, accuracy: bool = True) -> LossParts:
    """Forward a collated batch through Dia and score it; the one step that training, evaluation and the
    benchmark share. No `labels` go to the model: its built-in loss is an unweighted mean."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        use_cache=False,  # the decoder's own config asks for a cache, which checkpointed layers refuse with a warning
    )
    return codebook_loss(out.logits, batch["labels"], weights, accuracy)


@dataclass
class DiaScorer:
    """Dia's loss as the shared loop calls it: each codebook a head, weighted by `train.codebook_weights`."""

    weights: torch.Tensor  # [C]

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(f"cb{c}" for c in range(len(self.weights)))

    def __call__(self, model, batch: dict, accuracy: bool = True) -> LossParts:
        return batch_loss(model, batch, self.weights, accuracy)

    def target_weight(self, batch: dict) -> torch.Tensor:
        return target_weight(batch["labels"], self.weights)

    def to(self, device) -> DiaScorer:
        return DiaScorer(self.weights.to(device))
