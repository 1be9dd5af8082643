"""Evaluation loss and accuracy per head (Dia: each codebook; Dia2: the action and each codebook), exact across
processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from dia_tpu.families.heads import Scorer


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, loader, scorer: Scorer) -> dict[str, float]:
    """Weighted loss (as trained) plus each head's loss and accuracy over the whole eval set.

    Per-sample (sum, count) rows go through `gather_for_metrics`, which drops the samples Accelerate
    repeats to even out the last batch, so the result is the exact global mean on any process count.
    """
    was_training = model.training
    model.eval()
    totals = None
    for batch in loader:
        parts = scorer(model, batch)
        weighted = torch.stack([parts.weighted, parts.weight], 1)  # [B, 2]
        rows = accelerator.gather_for_metrics((parts.ce_sum, parts.correct, parts.count, weighted))
        sums = [r.sum(0) for r in rows]
        totals = sums if totals is None else [a + b for a, b in zip(totals, sums, strict=True)]
    model.train(was_training)
    ce, correct, count, (weighted_sum, weight) = (t.double().cpu() for t in totals)
    metrics = {"eval/loss": float(weighted_sum / weight)}
    for h, head in enumerate(scorer.heads):
        metrics[f"eval/loss_{head}"] = float(ce[h] / count[h])
        metrics[f"eval/acc_{head}"] = float(correct[h] / count[h])
    metrics["eval/tokens"] = float(count.sum())
    return metrics
