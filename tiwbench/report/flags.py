"""Flags a report raises about itself, computed from the records: where a table or a cell cannot be read
as a converged, resolved comparison. They travel with every format (columns of the aggregated cells),
and ``tiwbench check --strict`` fails on them.

Per table (suite, dataset, metric, panel):
- ``unconverged``: on a ranked metric that measures distance to the truth (the metric's ``oracle_leads``;
  not ``memorized``), the oracle (trained on the unbiased data every method lacks) is beaten in some column,
  by the leaderboard's own test: some method separated from it and better by the paired Student-t test on
  the per-seed log ratios (Holm over the column's method-versus-oracle comparisons); where they share no
  seeds, its interval wholly better; where a cell has no interval (n < 2), its mean better. The table is
  unconverged or misconfigured.
- ``mixed_selection``: its cells chose their checkpoints by different rules (``train.selection.source``):
  their numbers answer different questions (a truth-chosen cell is never ranked beside the others).
Per cell (method × column):
- ``selected_by_truth``: the checkpoint was chosen against the unbiased target (``select_source: truth``),
  which no practitioner has: a reference, as a published number chosen on the test set is;
- ``peak_not_reached``: most seeds chose the last checkpoint snapshot (train.selection): the validation
  curve may still be improving where the budget ends;
- ``n_lt_3``: fewer than 3 seeds finished (no interval, or one too wide to read);
- ``at_reference_level``: the mean lies inside the reference level's interval (the ``(reference level)``
  row of the same column): what reproducing D_ref exactly would score, nothing left to win there;
- ``budget_moved``: the suite's ``<suite>_x2`` records (``--budget-scale 2``) put this cell's mean outside
  its 95 % interval.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tiwbench.registry import METRICS, RegistryError
from tiwbench.report.intervals import CONFIDENCE, holm, panel_key
from tiwbench.report.leaderboard import REF_LEVEL_METHOD, TABLE_FLAGS, TRUTH, paired_log_test, ranked, x_axis

CELL_FLAGS = {
    "selected_by_truth": "checkpoint chosen against the unbiased target (test-set selection)",
    "peak_not_reached": "most seeds chose the last checkpoint snapshot",
    "n_lt_3": "fewer than 3 seeds (no interval)",
    "at_reference_level": "mean inside the reference level's interval",
    "budget_moved": "the 2x budget moved the mean outside its interval",
}
FLAGS = {**TABLE_FLAGS, **CELL_FLAGS}
# what `check --strict` fails on: the flags that say a table's ranking cannot be trusted (the oracle beaten, a
# mean that moved with twice the budget); the others describe cells (a ceiling's peak not reached, few seeds,
# a mean at the reference level) and fail only when asked for with --strict-on
STRICT = ("unconverged", "mixed_selection", "budget_moved")
ORACLES = ("oracle",)  # methods trained on the unbiased data: every converged table has them best or tied
MIN_SEEDS = 3
COLUMN = ["suite", "dataset", "metric", "x_name", "x", "ref_frac"]
TABLE = ["suite", "dataset", "metric", "panel"]


def oracle_leads(metric: str) -> bool:
    """Whether a converged table of ``metric`` has the oracle best or tied (a plugin metric not installed
    here: assumed so, as every ranked metric by default)."""
    try:
        return bool(getattr(METRICS.get(metric), "oracle_leads", True))
    except RegistryError:
        return True


def _is_oracle(method: str) -> bool:
    return method.split("@")[0] in ORACLES


def oracle_beaten(col: pd.DataFrame, values: dict[Any, dict] | None = None) -> bool:
    """Whether some method beats the oracle in one column, decided as the leaderboard decides a winner: where
    the two share two or more seeds, a paired Student-t test on the per-seed differences (of the logs where
    every value is positive), Holm over the column's method-versus-oracle comparisons, and beaten when a
    method is separated from the oracle and better; where they share none, its interval wholly better than
    the oracle's; where either has one seed, its mean better (one seed cannot show a converged ranking).
    ``values``: index -> {seed: value} (``aggregate``'s per-seed values)."""
    ok = col[(col.n > 0) & (col.method != REF_LEVEL_METHOD)]
    oracle = ok[ok.method.map(_is_oracle)]
    others = ok[~ok.method.map(_is_oracle)]
    if oracle.empty or others.empty:
        return False
    o = oracle.iloc[0]
    sign = 1.0 if bool(o.higher_is_better) else -1.0  # sign · value: larger is better
    seeds_o = (values or {}).get(o.name, {})
    p_values = []
    for i, r in others.iterrows():
        test = paired_log_test((values or {}).get(i, {}), seeds_o)
        if test is not None:
            mean, p = test
            p_values.append(p if sign * mean > 0 else 1.0)  # only a method better than the oracle counts
        elif o.n >= 2 and r.n >= 2:
            if min(sign * r.ci_low, sign * r.ci_high) > max(sign * o.ci_low, sign * o.ci_high):
                return True
        elif sign * r["mean"] > sign * o["mean"]:
            return True
    return any(holm(p_values, 1 - CONFIDENCE))


def peaks_at_end(records: list[dict[str, Any]]) -> dict[tuple, bool]:
    """(suite, dataset, method, ref_frac, x_name, x) -> whether most seeds chose their last snapshot."""
    counts: dict[tuple, list[int]] = {}
    for r in records:
        sel = (r.get("train") or {}).get("selection")
        if r.get("status", "ok") != "ok" or not sel or not sel.get("values"):
            continue
        x_name, x = x_axis(r)
        key = (r.get("suite") or "", r["dataset"], r["method"], float(r["ref_frac"]), x_name, x)
        last = max(int(s) for s in sel["values"])
        c = counts.setdefault(key, [0, 0])
        c[0] += int(int(sel["step"]) == last)
        c[1] += 1
    return {k: at_end > seeds / 2 for k, (at_end, seeds) in counts.items()}


def budget_moves(agg: pd.DataFrame) -> set[tuple]:
    """(suite, dataset, metric, method, ref_frac, x_name, x) of the cells that a ``<suite>_x2`` moved."""
    from tiwbench.report.budget_check import budget_check

    out = set()
    suites = set(agg.suite)
    for suite in sorted(s for s in suites if f"{s}_x2" in suites):
        per_method, _ = budget_check(agg, suite)
        for r in per_method[per_method.moved].itertuples():
            out.add((suite, r.dataset, r.metric, r.method, float(r.ref_frac), r.x_name, float(r.x)))
    return out


def per_seed(agg: pd.DataFrame, df: pd.DataFrame) -> dict[Any, dict]:
    """Index of ``agg`` -> {seed: value} of the finished seeds of ``df`` (the ``records_frame`` rows ``agg`` came
    from): what the paired tests read."""
    from tiwbench.report.leaderboard import KEY

    ok = df[df.status == "ok"]
    by_key = {key: dict(zip(g.seed, g.value, strict=True)) for key, g in ok.groupby(KEY, sort=False)}
    return {i: by_key.get(tuple(agg.loc[i, KEY]), {}) for i in agg.index}


def _cell_flags(r: pd.Series, level: pd.Series | None, peaks: dict, moved: set) -> list[str]:
    if r.method == REF_LEVEL_METHOD:
        return []
    flags = []
    if TRUTH in str(r.get("selection") or "").split(","):
        flags.append("selected_by_truth")
    if peaks.get((r.suite, r.dataset, r.method, float(r.ref_frac), r.x_name, float(r.x))):
        flags.append("peak_not_reached")
    if r.n < MIN_SEEDS:
        flags.append("n_lt_3")
    if level is not None and r.n > 0 and math.isfinite(level.ci_low) and level.ci_low <= r["mean"] <= level.ci_high:
        flags.append("at_reference_level")
    if (r.suite, r.dataset, r.metric, r.method, float(r.ref_frac), r.x_name, float(r.x)) in moved:
        flags.append("budget_moved")
    return flags


def add_flags(agg: pd.DataFrame, records: list[dict[str, Any]], df: pd.DataFrame | None = None) -> pd.DataFrame:
    """``agg`` with two columns: ``cell_flags`` (the cell's) and ``table_flags`` (its table's, on every row);
    ``df``: the per-seed rows ``agg`` came from (default: from ``records``)."""
    agg = agg.copy()
    if agg.empty:
        return agg.assign(cell_flags=[], table_flags=[])
    peaks, moved = peaks_at_end(records), budget_moves(agg)
    from tiwbench.report.leaderboard import records_frame

    seeds = per_seed(agg, records_frame(records) if df is None else df)
    cell_flags = pd.Series([[] for _ in range(len(agg))], index=agg.index, dtype=object)
    unconverged, mixed = set(), set()
    for key, col in agg.groupby(COLUMN, sort=False):
        if "selection" in col:
            rules = {x for xs in col.selection[col.method != REF_LEVEL_METHOD].dropna() for x in str(xs).split(",")
                     if x}
            if len(rules) > 1:
                mixed.add(key)
        levels = col[col.method == REF_LEVEL_METHOD]
        level = levels.iloc[0] if len(levels) else None
        for i, r in col.iterrows():
            cell_flags[i] = _cell_flags(r, level, peaks, moved)
        if ranked(key[2]) and oracle_leads(key[2]) and oracle_beaten(col, seeds):
            unconverged.add(key)
    agg["cell_flags"] = cell_flags
    columns = agg[COLUMN].apply(tuple, axis=1)
    panels = panel_key(agg)
    tables = {name: {tuple(agg.loc[i, ["suite", "dataset", "metric"]]) + (panels[i],)
                     for i in agg.index if columns[i] in keys}
              for name, keys in (("unconverged", unconverged), ("mixed_selection", mixed))}
    table_keys = pd.Series(list(zip(agg.suite, agg.dataset, agg.metric, panels, strict=True)), index=agg.index)
    agg["table_flags"] = table_keys.map(lambda k: [name for name, bad in tables.items() if k in bad])
    return agg


def flag_counts(agg: pd.DataFrame) -> dict[str, int]:
    """How many tables (table flags) and cells (cell flags) raise each flag."""
    counts = dict.fromkeys(FLAGS, 0)
    if agg.empty or "cell_flags" not in agg:
        return counts
    tables = agg.assign(panel=panel_key(agg)).drop_duplicates(TABLE)
    for fl in tables.table_flags:
        for f in fl:
            counts[f] += 1
    for fl in agg["cell_flags"]:
        for f in fl:
            counts[f] += 1
    return counts


def flag_summary(agg: pd.DataFrame) -> str:
    """One line: the flags raised and how often ("" when none)."""
    raised = [f"{FLAGS[f]} ({f}): {n} {'table' if f in TABLE_FLAGS else 'cell'}{'s' if n != 1 else ''}"
              for f, n in flag_counts(agg).items() if n]
    return "Flags raised: " + "; ".join(raised) + "." if raised else ""


def parse_flags(text: str | None) -> list[str]:
    """``--strict-on`` -> flag names (empty: :data:`STRICT`; "all": every flag); an unknown name is a one-line
    error."""
    from tiwbench.report.intervals import ReportError

    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not names:
        return list(STRICT)
    if names == ["all"]:
        return list(FLAGS)
    unknown = [n for n in names if n not in FLAGS]
    if unknown:
        raise ReportError(f"unknown flag {unknown[0]!r}; use 'all' or some of {', '.join(FLAGS)}")
    return names


def strict_check(agg: pd.DataFrame, chosen: list[str]) -> tuple[bool, str]:
    """(passed, text): every table and cell raising one of ``chosen``, one line each."""
    lines = []
    if len(agg):
        seen = set()
        for _, r in agg.assign(panel=panel_key(agg)).iterrows():
            table = (r.suite, r.dataset, r.metric, r.panel)
            where = f"{r.suite} · {r.dataset} · {r.metric}" + ("" if r.panel == "ref_frac" else f" ({r.panel})")
            for f in r.table_flags:
                if f in chosen and table not in seen:
                    seen.add(table)
                    lines.append(f"FLAG {f}: table {where}: {FLAGS[f]}")
            for f in r["cell_flags"]:
                if f in chosen:
                    lines.append(f"FLAG {f}: {where} · {r.method} at {r.x_name}={r.x:g}: {FLAGS[f]}")
    head = (f"strict: {len(lines)} flag{'s' if len(lines) != 1 else ''} raised among {', '.join(chosen)}"
            if lines else f"strict: no flag raised among {', '.join(chosen)}")
    return not lines, "\n".join([head, *lines]) + "\n"
