"""The verdict grid at the top of a report: per (suite, dataset) one grid whose rows are the reference sizes
(or the swept point) and whose columns are the ranked metrics. Each cell says who wins that leaderboard
column, by the leaderboard's own marks (paired tests, Holm over the column; ceilings and reference levels
never win): the winner and its paired margin over the runner-up, or the tied set; its flags as one-letter
symbols. The same cells are the headline's sentences (tiwbench.report.headline) and travel in json and csv."""

from __future__ import annotations

import html
import math
import re
from typing import Any

import pandas as pd

from tiwbench.report.intervals import paired_t
from tiwbench.report.leaderboard import REF_LEVEL_METHOD, ranked, tables

# one symbol per flag of tiwbench.report.flags, and the legend that explains them
SYMBOLS = {"unconverged": "U", "mixed_selection": "M", "budget_moved": "B", "selected_by_truth": "T",
           "peak_not_reached": "P", "n_lt_3": "n", "at_reference_level": "L"}
SYMBOL_TEXT = {"U": "unconverged (the oracle beaten)", "M": "checkpoint rules mixed", "B": "moved with 2× budget",
               "T": "a checkpoint chosen by the truth", "P": "peak not reached", "n": "fewer than 3 seeds",
               "L": "at the reference level"}


def _num(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def table_id(t: dict[str, Any]) -> str:
    """The anchor of a leaderboard table in the HTML page."""
    raw = f"{t['suite']}-{t['dataset']}-{t['metric']}-{t.get('panel', 'ref_frac')}"
    return "t-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def seed_values(df: pd.DataFrame) -> dict[tuple, dict]:
    """(suite, dataset, metric, ref_frac, x, method) -> {seed: value} of the finished seeds (``records_frame``
    rows)."""
    ok = df[df.status == "ok"]
    return {key: dict(zip(g.seed, g.value, strict=True))
            for key, g in ok.groupby(["suite", "dataset", "metric", "ref_frac", "x", "method"], sort=False)}


def paired_margin(winner: dict, other: dict, higher_is_better: bool) -> dict[str, Any]:
    """How far ``winner`` is ahead of ``other``, paired by seed: mean difference (positive: ahead) with its
    paired Student-t interval, the seeds in common and on how many it is ahead."""
    seeds = sorted(set(winner) & set(other) - {None}, key=str)
    if not seeds:
        return {"n": 0}
    sign = 1.0 if higher_is_better else -1.0
    d = [sign * (float(winner[s]) - float(other[s])) for s in seeds]
    mean, half, _ = paired_t(d)
    return {"n": len(seeds), "mean": mean, "low": mean - half, "high": mean + half, "ahead": sum(x > 0 for x in d)}


def column_verdict(t: dict[str, Any], f: float, values: dict[tuple, dict]) -> dict[str, Any] | None:
    """The verdict of one leaderboard column: kind ("winner", "tie" or "only"), the winner or tied set (best
    mean first), the runner-up and the margins over it and over dsm_ref, the reference rows and the flags the
    column's cells and table carry; None where no ranked method ran."""
    cells = [t["cells"][(m, f)] for m in t["methods"] if (m, f) in t["cells"]]
    live = [r for r in cells if r.n > 0 and r.method != REF_LEVEL_METHOD and not bool(r.get("ceiling", False))
            and not bool(r.get("rule_reference", False))]
    if not live:
        return None
    hib = t["higher_is_better"]
    live.sort(key=lambda r: -r["mean"] if hib else r["mean"])
    seeds = {r.method: values.get((t["suite"], t["dataset"], t["metric"], r.ref_frac, f, r.method), {})
             for r in cells}
    leaders = [r for r in live if r.mark in ("best", "tie")]
    out: dict[str, Any] = {"means": {r.method: float(r["mean"]) for r in live}}
    if len(live) == 1:
        out.update(kind="only", winner=live[0].method, tied=[live[0].method])
    elif len(leaders) == 1:
        w, second = leaders[0], live[1]
        out.update(kind="winner", winner=w.method, tied=[w.method], runner_up=second.method,
                   margin=paired_margin(seeds[w.method], seeds[second.method], hib))
        if "dsm_ref" not in (w.method, second.method) and "dsm_ref" in seeds:
            out["vs_dsm_ref"] = paired_margin(seeds[w.method], seeds["dsm_ref"], hib)
    else:
        out.update(kind="tie", winner=None, tied=[r.method for r in (leaders or live)])
    out["references"] = {r.method: float(r["mean"]) for r in cells
                         if r.n > 0 and (bool(r.get("ceiling", False)) or bool(r.get("rule_reference", False))
                                         or r.method == REF_LEVEL_METHOD)}
    flags = list(t.get("flags") or [])
    for r in live:  # the table's flags and the ranked cells' (a reference row's own flags decide nothing here)
        fl = r.get("cell_flags")
        flags += [x for x in (fl if isinstance(fl, list) else []) if x not in flags]
    out["flags"] = flags
    return out


def verdict_grid(agg: pd.DataFrame, df: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per (suite, dataset, panel): its rows (the x-axis labels), its ranked metrics and the verdict
    of each (row, metric) with the id of the table it reads."""
    values = seed_values(df)
    grids: dict[tuple, dict[str, Any]] = {}
    for t in tables(agg):
        if not ranked(t["metric"]):
            continue
        key = (t["suite"], t["dataset"], t.get("panel", "ref_frac"))
        g = grids.setdefault(key, {"suite": key[0], "dataset": key[1], "panel": key[2], "rows": {}, "metrics": [],
                                   "cells": {}})
        g["metrics"].append(t["metric"])
        for f, label in zip(t["fracs"], t["labels"], strict=True):
            v = column_verdict(t, f, values)
            g["rows"].setdefault(f, label)
            if v is not None:
                g["cells"][(f, t["metric"])] = {**v, "table": table_id(t), "higher_is_better": t["higher_is_better"]}
    return [g for g in grids.values() if g["cells"]]


def symbols(flags: list[str]) -> str:
    return "".join(SYMBOLS[f] for f in SYMBOLS if f in flags)


def cell_text(v: dict[str, Any] | None) -> str:
    """A grid cell without markup: "**winner** by m [lo, hi] over runner-up", "≈ a, b", "only a"."""
    if v is None:
        return "–"
    if v["kind"] == "winner":
        m = v["margin"]
        by = (f" by {_num(m['mean'])} [{_num(m['low'])}, {_num(m['high'])}]" if m.get("n", 0) >= 2 else "")
        text = f"**{v['winner']}**{by} over {v['runner_up']}"
    elif v["kind"] == "only":
        text = f"only {v['winner']}"
    else:
        text = "no winner: ≈ " + ", ".join(v["tied"])
    flag = symbols(v["flags"])
    return text + (f" ⚑{flag}" if flag else "")


LEGEND = ("Each cell: the winner of that leaderboard column (separated from every other runnable method by "
          "paired tests, Holm over the column) and its margin over the runner-up, the per-seed mean difference "
          "with its paired 95 % interval (positive: ahead); or the tied set, best mean first. Ceilings and "
          "reference levels never win. ⚑ " + "; ".join(f"{k}: {v}" for k, v in SYMBOL_TEXT.items()) + ".")


def _arrow(g: dict[str, Any], metric: str) -> str:
    hib = next((v["higher_is_better"] for (_, m), v in g["cells"].items() if m == metric), False)
    return "↑" if hib else "↓"


def _title(g: dict[str, Any]) -> str:
    panel = "" if g["panel"] == "ref_frac" else f", {g['panel']}"
    return f"{g['dataset']} (suite {g['suite']}{panel})"


def to_markdown(agg: pd.DataFrame, df: pd.DataFrame) -> str:
    grids = verdict_grid(agg, df)
    if not grids:
        return ""
    lines = ["## Verdicts", "", f"_{LEGEND}_", ""]
    for g in grids:
        lines += [f"| {_title(g)} | " + " | ".join(f"{m} {_arrow(g, m)}" for m in g["metrics"]) + " |",
                  "|---|" + "---|" * len(g["metrics"])]
        for f, label in sorted(g["rows"].items()):
            lines.append(f"| {label} | " + " | ".join(cell_text(g["cells"].get((f, m))) for m in g["metrics"]) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def to_html(agg: pd.DataFrame, df: pd.DataFrame) -> str:
    grids = verdict_grid(agg, df)
    if not grids:
        return ""
    parts = ['<h2 id="verdicts">Verdicts</h2>', f"<p><small>{html.escape(LEGEND)}</small></p>"]
    for g in grids:
        head = (f"<tr><th>{html.escape(_title(g))}</th>"
                + "".join(f"<th>{html.escape(m)} {_arrow(g, m)}</th>" for m in g["metrics"]) + "</tr>")
        rows = []
        for f, label in sorted(g["rows"].items()):
            tds = []
            for m in g["metrics"]:
                v = g["cells"].get((f, m))
                if v is None:
                    tds.append("<td>–</td>")
                    continue
                text = html.escape(cell_text(v)).split("**")
                inner = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(text))
                flags = f' data-flags="{html.escape(" ".join(v["flags"]))}"' if v["flags"] else ""
                tds.append(f'<td class="verdict {v["kind"]}" data-winner="{html.escape(v["winner"] or "")}"{flags}>'
                           f'<a href="#{v["table"]}">{inner}</a></td>')
            rows.append(f"<tr><td>{html.escape(label)}</td>{''.join(tds)}</tr>")
        parts.append(f'<table class="verdicts">{head}{"".join(rows)}</table>')
    return "\n".join(parts)


def tidy(agg: pd.DataFrame, df: pd.DataFrame) -> list[dict[str, Any]]:
    """The grid's cells as plain dicts (json; csv joins the verdict onto each leaderboard row)."""
    out = []
    for g in verdict_grid(agg, df):
        for (f, metric), v in sorted(g["cells"].items()):
            m = v.get("margin") or {}
            out.append({"suite": g["suite"], "dataset": g["dataset"], "panel": g["panel"], "x": f,
                        "label": g["rows"][f], "metric": metric, "verdict": v["kind"], "winner": v["winner"],
                        "tied": v["tied"], "runner_up": v.get("runner_up"),
                        "margin": m.get("mean"), "margin_low": m.get("low"), "margin_high": m.get("high"),
                        "flags": v["flags"], "text": cell_text(v).replace("**", "")})
    return out
