"""What the report, its plots and the paired comparisons share: the confidence level, the Student-t
interval of a mean over seeds, the error for records that cannot be reported, and what one table or
plot panel holds fixed."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


class ReportError(ValueError):
    """Records or a baseline that cannot be read; the message names the fix."""


def ci_halfwidth(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t interval for a mean of ``n`` seeds; NaN when n < 2 (no interval)."""
    if n < 2 or std is None or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


def panel_key(agg: pd.DataFrame) -> pd.Series:
    """What is held fixed in one table or plot panel beside suite, dataset and metric: the x-axis, and
    ref_frac when another parameter is swept."""
    return agg.x_name.where(agg.x_name == "ref_frac", agg.x_name + " at ref_frac=" + agg.ref_frac.map("{:g}".format))
