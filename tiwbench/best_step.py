"""The best-step rule every selection in tiwbench follows (a cell's reported checkpoint, a ratio model's
early-stopping step): the step with the best finite score, ties to the earliest step. So a run of twice
the budget, which sees every score of the shorter run and more, changes its choice only when a later
step is strictly better."""

from __future__ import annotations

import math


def best_step(values: dict[int, float], higher_is_better: bool = False, default: int | None = None) -> int:
    """The step of ``values`` ({step: score}) with the best finite score, the earliest among equals;
    ``default`` (else the last step) when no score is finite."""
    sign = -1.0 if higher_is_better else 1.0
    finite = [k for k in values if math.isfinite(values[k])]
    if not finite:
        return max(values) if default is None else default
    return min(finite, key=lambda k: (sign * values[k], k))
