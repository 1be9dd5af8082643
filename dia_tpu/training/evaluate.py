"""Evaluation loss and accuracy per codebook, exact across processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from dia_tpu.training.loss import batch_loss


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, loader, weights: torch.Tensor) -> dict[str, float]:
    """Weighted loss (as trained) plus per-codebook loss and accuracy over the whole eval set.

    Per-sample (sum, count) rows go through `gather_for_metrics`, which drops the samples Accelerate
    repeats to even out the last batch, so the result is the exact global mean on any process count.
    """
    was_training = model.training
    model.eval()
    totals = None
    for batch in loader:
        parts = batch_loss(model, batch, weights)
        rows = accelerator.gather_for_metrics((parts.ce_sum, parts.correct, parts.count))
        sums = torch.stack([r.sum(0) for r in rows])  # [3, C]
        totals = sums if totals is None else totals + sums
    model.train(was_training)
    ce, correct, count = totals.double().cpu()
    w = weights.double()
    metrics = {"eval/loss": float((ce * w).sum() / (count * w).sum())}
    for c in range(len(ce)):
        metrics[f"eval/loss_cb{c}"] = float(ce[c] / count[c])
        metrics[f"eval/acc_cb{c}"] = float(correct[c] / count[c])
    metrics["eval/tokens"] = float(count.sum())
    return metrics
