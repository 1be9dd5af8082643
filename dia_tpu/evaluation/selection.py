"""The score that best/ and early stopping follow: eval.select_by's figures, weighed. What eval.select_by may
name, and where each figure is in an evaluation's metrics, is the config's (`dia_tpu.config.checks.SELECTABLE`):
it is the schema of what may be chosen, and the config checks it at load."""

from __future__ import annotations

import math

from dia_tpu.config.checks import SELECTABLE, selection_terms

# Figures where higher is better: eval.select_by counts them negated.
HIGHER_IS_BETTER = ("speaker_similarity", "mos")


def selection_score(select_by: str, metrics: dict[str, float]) -> float:
    """What best/ and early stopping follow, lower is better: the weighted sum of eval.select_by's figures
    (a similarity counts negated). A figure that is missing (no words to recognise, no voice) is infinite, so
    such an evaluation never counts as the best."""
    score = 0.0
    for name, weight in selection_terms(select_by).items():
        value = metrics.get(SELECTABLE[name], math.inf)
        score += weight * (-value if name in HIGHER_IS_BETTER and math.isfinite(value) else value)
    return score
