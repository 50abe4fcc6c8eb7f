"""The headline at the top of every report: per (suite, dataset, metric) and reference size, the winner
with its paired margin over the runner-up and over ``dsm_ref``, or "no winner" with the tied set. Plain
sentences generated from the leaderboard's marks and the per-seed values; ceilings are quoted for
reference and never named as winners. Flags a table carries (a ``flags`` column of the aggregated cells)
are repeated beside its sentence."""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from tiwbench.report.intervals import CONFIDENCE, paired_t
from tiwbench.report.leaderboard import REF_LEVEL_METHOD, ranked, tables

BASELINE = "dsm_ref"  # what a practitioner gets from D_ref alone: the margin every winner is read against


def _num(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def seed_values(df: pd.DataFrame) -> dict[tuple, dict]:
    """(suite, dataset, metric, ref_frac, x, method) -> {seed: value} of the finished seeds (``records_frame``
    rows)."""
    ok = df[df.status == "ok"]
    return {key: dict(zip(g.seed, g.value, strict=True))
            for key, g in ok.groupby(["suite", "dataset", "metric", "ref_frac", "x", "method"], sort=False)}


def margin(winner: dict, other: dict, higher_is_better: bool) -> str:
    """How far ``winner`` is ahead of ``other``, paired by seed: the mean difference with its paired
    Student-t interval, and on how many seeds it is ahead."""
    seeds = sorted(set(winner) & set(other) - {None}, key=str)
    if not seeds:
        return "no seeds in common"
    sign = 1.0 if higher_is_better else -1.0
    d = [sign * (float(winner[s]) - float(other[s])) for s in seeds]  # positive: winner ahead
    mean, half, _ = paired_t(d)
    ahead = sum(x > 0 for x in d)
    where = "higher" if higher_is_better else "lower"
    ci = (f"paired {CONFIDENCE:.0%} CI [{_num(mean - half)}, {_num(mean + half)}], "
          if math.isfinite(half) else "")
    return f"{where} by {_num(mean)} ({ci}ahead on {ahead} of {len(seeds)} seeds)"


def _flags(cells: list[pd.Series]) -> list[str]:
    """``method: flag`` for each flag the cells carry (a string or a list in the ``cell_flags`` column of
    tiwbench.report.flags, or a ``flags`` column), once each."""
    out: list[str] = []
    for r in cells:
        f = r.get("cell_flags", r.get("flags"))
        for flag in [f] if isinstance(f, str) else list(f) if isinstance(f, list | tuple) else []:
            if flag and f"{r.method}: {flag}" not in out:
                out.append(f"{r.method}: {flag}")
    return out


def column_sentence(t: dict[str, Any], f: float, label: str, values: dict[tuple, dict]) -> str | None:
    """The sentence of one column (one reference size) of a leaderboard table; None where nothing ran."""
    cells = [t["cells"][(m, f)] for m in t["methods"] if (m, f) in t["cells"]]
    live = [r for r in cells if r.n > 0 and r.method != REF_LEVEL_METHOD and not bool(r.get("ceiling", False))]
    if not live:
        return None
    hib = t["higher_is_better"]
    live.sort(key=lambda r: -r["mean"] if hib else r["mean"])
    seeds = {r.method: values.get((t["suite"], t["dataset"], t["metric"], r.ref_frac, f, r.method), {})
             for r in cells}
    leaders = [r for r in live if r.mark in ("best", "tie")]
    if len(live) == 1:
        text = f"at {label}, only {live[0].method} ran ({_num(live[0]['mean'])})"
    elif len(leaders) == 1:
        w = leaders[0]
        runner_up = margin(seeds[w.method], seeds[live[1].method], hib)
        text = f"at {label}, **{w.method}** wins ({_num(w['mean'])}): {runner_up} than the runner-up {live[1].method}"
        if w.method != BASELINE and live[1].method != BASELINE and BASELINE in seeds:
            text += f", {margin(seeds[w.method], seeds[BASELINE], hib)} than {BASELINE}"
    else:
        tied = leaders or live
        text = f"at {label}, no winner: " + " ≈ ".join(f"{r.method} ({_num(r['mean'])})" for r in tied)
    refs = [r for r in cells if r.n > 0 and (bool(r.get("ceiling", False)) or r.method == REF_LEVEL_METHOD)]
    if refs:
        text += "; for reference " + ", ".join(f"{r.method} {_num(r['mean'])}" for r in refs)
    flags = _flags(cells)
    if flags:
        text += f" [flags: {'; '.join(flags)}]"
    return text + "."


def headline(agg: pd.DataFrame, df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(table title, sentences) per ranked leaderboard table, from the aggregated cells ``agg`` and the
    per-seed rows ``df`` they were aggregated from."""
    values = seed_values(df)
    out = []
    for t in tables(agg):
        if not ranked(t["metric"]):
            continue
        sentences = [s for f, label in zip(t["fracs"], t["labels"], strict=True)
                     if (s := column_sentence(t, f, label, values))]
        if sentences:
            arrow = "↑" if t["higher_is_better"] else "↓"
            swept = f", {t['panel']}" if t.get("panel", "ref_frac") != "ref_frac" else ""
            table_flags = f" ⚑ {', '.join(t['flags'])}" if t.get("flags") else ""  # e.g. unconverged: read with care
            out.append((f"{t['dataset']} · {t['metric']} {arrow} (suite {t['suite']}{swept}){table_flags}", sentences))
    return out


INTRO = ("Per table and reference size: the winner (separated from every other runnable method, the "
         "leaderboard's rule) with its margin over the runner-up and over dsm_ref, mean of the per-seed "
         "differences with their paired interval; or the tied set, best mean first. Ceilings and reference levels are "
         "quoted for reference and never win.")


def to_markdown(agg: pd.DataFrame, df: pd.DataFrame) -> str:
    items = headline(agg, df)
    if not items:
        return ""
    lines = ["## Headline", "", f"_{INTRO}_", ""]
    for title, sentences in items:
        lines.append(f"- **{title}**: " + " ".join(s[0].upper() + s[1:] for s in sentences))
    return "\n".join(lines) + "\n\n"


def _bold(s: str) -> str:
    parts = html.escape(s).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(agg: pd.DataFrame, df: pd.DataFrame) -> str:
    items = headline(agg, df)
    if not items:
        return ""
    lis = "".join(f"<li><b>{html.escape(title)}</b>: " + " ".join(_bold(s[0].upper() + s[1:]) for s in sentences)
                  + "</li>" for title, sentences in items)
    return f'<h2 id="headline">Headline</h2><p><small>{html.escape(INTRO)}</small></p><ul class="headline">{lis}</ul>'
