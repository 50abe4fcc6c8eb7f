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


def paired_t(d: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, half-width, two-sided p of mean 0) of the Student-t test on paired differences ``d``;
    half and p NaN below 2 pairs. Equal non-zero differences are a certain difference (p 0); all zero, none."""
    n = len(d)
    mean = sum(d) / n if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0:
        return mean, half, 1.0 if mean == 0 else 0.0
    return mean, half, float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(p: list[float], alpha: float = 1 - CONFIDENCE) -> list[bool]:
    """Holm's step-down correction: which of the family's hypotheses are rejected at family-wise ``alpha``
    (the k-th smallest p against alpha/(m − k), stopping at the first that fails)."""
    order = sorted(range(len(p)), key=lambda i: p[i] if math.isfinite(p[i]) else math.inf)  # NaN: last
    out = [False] * len(p)
    for k, i in enumerate(order):
        if not p[i] <= alpha / (len(p) - k):  # NaN never rejects
            break
        out[i] = True
    return out
