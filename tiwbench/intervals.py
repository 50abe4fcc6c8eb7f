"""What the report, its plots and the paired comparisons share: the confidence level, the Student-t
interval of a mean over seeds, and the error for records that cannot be reported."""

from __future__ import annotations

import math

from scipy import stats

CONFIDENCE = 0.95


class ReportError(ValueError):
    """Records or a baseline that cannot be read; the message names the fix."""


def ci_halfwidth(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t interval for a mean of ``n`` seeds; NaN when n < 2 (no interval)."""
    if n < 2 or std is None or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
