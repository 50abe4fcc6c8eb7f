"""The budget-doubling check: is a profile converged? The same cells run at ``--budget-scale 2`` (records
under ``<suite>_x2``) should move no method's mean beyond its 95 % interval at 1× and change no winner."""

from __future__ import annotations

import math

import pandas as pd

from tiwbench.report.intervals import ReportError
from tiwbench.report.leaderboard import REF_LEVEL_METHOD

COLUMNS = ["dataset", "metric", "ref_frac", "x_name", "x", "method", "mean_1x", "ci_low_1x", "ci_high_1x", "mean_2x",
           "moved"]


def _leaders(col: pd.DataFrame) -> set[str]:
    marked = col[col.mark.isin(["best", "tie"])]
    return set(marked.method)


def budget_check(agg: pd.DataFrame, suite: str, scaled: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-method rows, per-column winners) of ``suite`` against ``scaled`` (default ``<suite>_x2``)."""
    scaled = scaled or f"{suite}_x2"
    one, two = agg[agg.suite == suite], agg[agg.suite == scaled]
    if one.empty or two.empty:
        raise ReportError(f"--budget-check {suite}: need records of both {suite!r} and {scaled!r} "
                          f"(run the same cells again with --budget-scale 2)")
    keys = ["dataset", "metric", "ref_frac", "x_name", "x", "method"]
    both = one.merge(two, on=keys, suffixes=("_1x", "_2x"))
    both = both[(both.method != REF_LEVEL_METHOD) & (both.n_1x > 0) & (both.n_2x > 0)]
    rows = []
    for _, r in both.iterrows():
        moved = math.isfinite(r.ci_low_1x) and not (r.ci_low_1x <= r.mean_2x <= r.ci_high_1x)
        rows.append({**{k: r[k] for k in keys}, "mean_1x": r.mean_1x, "ci_low_1x": r.ci_low_1x,
                     "ci_high_1x": r.ci_high_1x, "mean_2x": r.mean_2x, "moved": moved})
    per_method = pd.DataFrame(rows, columns=COLUMNS)
    cols = []
    for key, g in both.groupby(["dataset", "metric", "ref_frac", "x_name", "x"], sort=True):
        a = _leaders(g.rename(columns={"mark_1x": "mark"}))
        b = _leaders(g.rename(columns={"mark_2x": "mark"}))
        # a winner changes when a clear winner at one budget is not among the leaders at the other
        best_a = set(g[g.mark_1x == "best"].method)
        best_b = set(g[g.mark_2x == "best"].method)
        changed = bool((best_a and not best_a <= b) or (best_b and not best_b <= a))
        cols.append({**dict(zip(["dataset", "metric", "ref_frac", "x_name", "x"], key, strict=True)),
                     "leaders_1x": sorted(a), "leaders_2x": sorted(b), "changed": changed})
    return per_method, pd.DataFrame(cols)


def to_markdown(agg: pd.DataFrame, suite: str) -> str:
    per_method, columns = budget_check(agg, suite)
    lines = [f"### Budget-doubling check: {suite} against {suite}_x2",
             "_moved: the 2× mean lies outside the 1× 95 % interval. changed: a clear winner at one budget is not "
             "among the leaders (best or tied) at the other._", "",
             "| dataset | metric | where | method | 1× mean [95 % CI] | 2× mean | moved |",
             "|---|---|---|---|---|---|---|"]
    for _, r in per_method.iterrows():
        where = f"{r.ref_frac:g}" + ("" if r.x_name == "ref_frac" else f", {r.x_name}={r.x:g}")
        lines.append(f"| {r.dataset} | {r.metric} | {where} | {r.method} | {r.mean_1x:.4g} "
                     f"[{r.ci_low_1x:.4g}, {r.ci_high_1x:.4g}] | {r.mean_2x:.4g} | {'**yes**' if r.moved else 'no'} |")
    lines += ["", "| dataset | metric | where | leaders 1× | leaders 2× | winner changed |",
              "|---|---|---|---|---|---|"]
    for _, r in columns.iterrows():
        where = f"{r.ref_frac:g}" + ("" if r.x_name == "ref_frac" else f", {r.x_name}={r.x:g}")
        lines.append(f"| {r.dataset} | {r.metric} | {where} | {', '.join(r.leaders_1x)} | {', '.join(r.leaders_2x)} "
                     f"| {'**yes**' if r.changed else 'no'} |")
    moved, changed = int(per_method.moved.sum()), int(columns.changed.sum())
    lines += ["", f"_{moved} of {len(per_method)} means moved beyond their interval; "
                  f"{changed} of {len(columns)} winners changed._"]
    return "\n".join(lines) + "\n"
