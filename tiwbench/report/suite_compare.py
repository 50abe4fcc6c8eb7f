"""The same cells under two suites, paired by seed (``tiwbench report --compare-suites A,B``): a suite run again
under another checkpoint rule (``--select``, records under ``<suite>_sel-...``) or another budget. Per method and
column, the per-seed difference B − A with its paired interval (:func:`tiwbench.report.paired.paired_interval`,
the one used by ``--vs``), and per column the leaders under each suite: which verdicts the change moves."""

from __future__ import annotations

import math

import pandas as pd

from tiwbench.report.budget_check import budget_check
from tiwbench.report.intervals import CONFIDENCE, ReportError
from tiwbench.report.leaderboard import REF_LEVEL_METHOD, direction
from tiwbench.report.paired import _fmt, _verdict, _where, paired_interval, welch_half

WHERE = ["dataset", "metric", "ref_frac", "x_name", "x"]
COLUMNS = [*WHERE, "method", "n", "mean_a", "mean_b", "diff", "paired_half", "unpaired_half", "higher_is_better"]


def parse_pair(text: str) -> tuple[str, str]:
    parts = [s.strip() for s in text.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ReportError(f"--compare-suites {text!r}: name two suites, A,B (e.g. regime,regime_sel-truth)")
    return parts[0], parts[1]


def suite_pairs(df: pd.DataFrame, a: str, b: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (dataset, metric, column, method) that both suites ran: B − A over the seeds both finished."""
    ok = df[(df.status == "ok") & (df.method != REF_LEVEL_METHOD)]
    have = set(ok.suite)
    missing = [s for s in (a, b) if s not in have]
    if missing:
        raise ReportError(f"--compare-suites: no finished records of suite {missing[0]!r}; suites here: "
                          f"{', '.join(sorted(have)) or 'none'}")
    rows = []
    for key, g in ok[ok.suite.isin([a, b])].groupby([*WHERE, "method"], sort=True):
        va = g[g.suite == a].set_index("seed").value
        vb = g[g.suite == b].set_index("seed").value
        seeds = sorted(set(va.index) & set(vb.index))
        if not seeds:
            continue
        xa, xb = [float(va[s]) for s in seeds], [float(vb[s]) for s in seeds]
        diff, half = paired_interval([y - x for x, y in zip(xa, xb, strict=True)], confidence)
        hib = direction(key[1], g.higher_is_better.dropna().iloc[0] if g.higher_is_better.notna().any() else None)
        rows.append({**dict(zip([*WHERE, "method"], key, strict=True)), "n": len(seeds),
                     "mean_a": sum(xa) / len(xa), "mean_b": sum(xb) / len(xb), "diff": diff, "paired_half": half,
                     "unpaired_half": welch_half(xb, xa, confidence), "higher_is_better": hib})
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(df: pd.DataFrame, agg: pd.DataFrame, a: str, b: str) -> str:
    table = suite_pairs(df, a, b)
    lines = [f"### {b} against {a}, paired by seed",
             f"_Per method and column: the means under each suite and B − A per seed, mean ± {CONFIDENCE:.0%} paired "
             "Student-t half-width over the seeds both finished (unpaired: Welch's). better/worse: B's interval "
             "excludes 0, in the metric's direction._", "",
             "| dataset | metric | where | method | n | A | B | B − A ± paired | unpaired ± | |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r.dataset} | {r.metric} | {_where(r)} | {r.method} | {r.n} | {_fmt(r.mean_a)} | "
                     f"{_fmt(r.mean_b)} | {_fmt(r['diff'])} ± {_fmt(r.paired_half)} | ± {_fmt(r.unpaired_half)} | "
                     f"{_verdict(r)} |")
    if table.empty:
        lines.append("| – | – | – | – | 0 | | | no cells in common | | |")
    _, columns = budget_check(agg, a, scaled=b)
    lines += ["", f"_Leaders (best or tied) of each column under {a} (A) and {b} (B); changed: a clear winner under "
                  "one is not among the leaders under the other._", "",
              "| dataset | metric | where | leaders A | leaders B | winner changed |", "|---|---|---|---|---|---|"]
    for _, r in columns.iterrows():
        lines.append(f"| {r.dataset} | {r.metric} | {_where(r)} | {', '.join(r.leaders_1x) or '–'} | "
                     f"{', '.join(r.leaders_2x) or '–'} | {'**yes**' if r.changed else 'no'} |")
    changed = int(columns.changed.sum()) if len(columns) else 0
    moved = int(sum(1 for _, r in table.iterrows() if math.isfinite(r.paired_half)
                    and abs(r["diff"]) > r.paired_half))
    lines += ["", f"_{moved} of {len(table)} paired differences exclude 0; {changed} of {len(columns)} winners "
                  "changed._"]
    return "\n".join(lines) + "\n"
