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

from tiwbench.report.intervals import CONFIDENCE
from tiwbench.report.leaderboard import ranked, tables
from tiwbench.report.verdicts import column_verdict, seed_values

BASELINE = "dsm_ref"  # what a practitioner gets from D_ref alone: the margin every winner is read against


def _num(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def margin_text(m: dict[str, Any], higher_is_better: bool) -> str:
    """A paired margin (:func:`tiwbench.report.verdicts.paired_margin`) as words."""
    if not m.get("n"):
        return "no seeds in common"
    where = "higher" if higher_is_better else "lower"
    ci = (f"paired {CONFIDENCE:.0%} CI [{_num(m['low'])}, {_num(m['high'])}], "
          if math.isfinite(m["high"] - m["low"]) else "")
    return f"{where} by {_num(m['mean'])} ({ci}ahead on {m['ahead']} of {m['n']} seeds)"


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
    v = column_verdict(t, f, values)
    if v is None:
        return None
    hib, means = t["higher_is_better"], v["means"]
    if v["kind"] == "only":
        text = f"at {label}, only {v['winner']} ran ({_num(means[v['winner']])})"
    elif v["kind"] == "winner":
        w = v["winner"]
        text = (f"at {label}, **{w}** wins ({_num(means[w])}): {margin_text(v['margin'], hib)} than the runner-up "
                f"{v['runner_up']}")
        if "vs_dsm_ref" in v:
            text += f", {margin_text(v['vs_dsm_ref'], hib)} than {BASELINE}"
    else:
        text = f"at {label}, no winner: " + " ≈ ".join(f"{m} ({_num(means[m])})" for m in v["tied"])
    if v["references"]:
        text += "; for reference " + ", ".join(f"{m} {_num(x)}" for m, x in v["references"].items())
    flags = _flags([t["cells"][(m, f)] for m in t["methods"] if (m, f) in t["cells"]])
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
