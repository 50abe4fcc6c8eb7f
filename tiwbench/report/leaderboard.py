"""Leaderboards from records alone.

Per (suite, dataset, metric): rows are methods, columns ref_frac; each cell is the mean ± std over seeds,
a Student-t confidence interval and the seed count. A method is marked best in a column only when every
other ranked method is separated from it (paired tests where cells share seeds, Holm-corrected; else
non-overlapping intervals); otherwise the leader and every method not separated from it are tied ("≈").
Ceilings and reference levels are reference rows, never ranked. Failed cells are shown as failed, with counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.config import config_hash
from tiwbench.records import load_records
from tiwbench.registry import METRICS, RegistryError
from tiwbench.report.ceilings import CEILING_LABEL, record_is_ceiling
from tiwbench.report.intervals import CONFIDENCE, ReportError, ci_halfwidth, holm, paired_t, panel_key
from tiwbench.report.labels import knows_labels

FORMATS = ("markdown", "csv", "latex", "html", "json")
# x: where a cell sits on the x-axis, the value of x_name (ref_frac, or the suite's swept dataset parameter)
KEY = ["suite", "dataset", "metric", "method", "ref_frac", "x_name", "x"]
ANY_METRIC = "(all metrics)"  # stands for the metrics of a failed record that does not list them
# reference levels (tiwbench.metrics.ref_levels) -> the table they are a row of, and what the row says
REF_LEVELS = {"bias_ref_level": ("bias", "n_gen samples labelled as D_ref"),
              "fd_ref_level": ("fd", "n_gen fresh samples of the truth")}
REF_LEVEL_METHOD = "(reference level)"
LEGACY_LEVELS = {"bias_floor": "bias_ref_level", "fd_floor": "fd_ref_level"}  # names in older records
# what a flagged table says (tiwbench.report.flags computes the flags; the cells' are listed there)
TABLE_FLAGS = {"unconverged": "unconverged or misconfigured: the oracle is not best or tied",
               "mixed_selection": "its cells chose their checkpoints by different rules (train.selection.source)"}
TRUTH = "truth"  # the selection source that looked at the unbiased target: never ranked beside the others


def selection_source(record: dict[str, Any]) -> str:
    """Where a record's checkpoint was chosen: its ``train.selection.source``; "none" without a selection,
    and "truth" for records from before sources were named (they scored against the evaluator's target)."""
    sel = (record.get("train") or {}).get("selection")
    if not sel:
        return "none"
    return str(sel.get("source", TRUTH))


# -- statistics -------------------------------------------------------------------------------------
def direction(metric: str, recorded: Any = None) -> bool:
    """True when higher is better: from the metric registry, else from what the records say."""
    try:
        return bool(METRICS.get(metric).higher_is_better)
    except RegistryError:  # a plugin metric not installed here
        if recorded is None or (isinstance(recorded, float) and math.isnan(recorded)):
            raise ReportError(f"metric {metric!r} is not registered here and its records do not say whether "
                              f"higher is better; install the plugin that provides it") from None
        return bool(recorded)


def ranked(metric: str) -> bool:
    """Whether the leaderboard marks a winner of ``metric`` (diagnostics such as bias_ref are shown only)."""
    try:
        return bool(getattr(METRICS.get(metric), "ranked", True))
    except RegistryError:  # a plugin metric not installed here: ranked, as every metric by default
        return True


def config_key(record: dict[str, Any]) -> str | None:
    """The hash of a record's config without its seed: seeds of one cell must share it."""
    cfg = record.get("config")
    if not cfg:
        return None
    return config_hash({k: v for k, v in cfg.items() if k != "seed"})


def x_axis(record: dict[str, Any]) -> tuple[str, float]:
    """The x-axis of a record's suite and its place on it: the swept dataset parameter, else ref_frac."""
    for name, value in (record.get("sweep") or {}).items():
        return str(name), float(value)
    return "ref_frac", float(record["ref_frac"])


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (record, metric). A failed record gets one row per metric it was configured for, with
    status 'failed' and no value, so that it is counted rather than dropped."""
    rows = []
    for r in records:
        key = {"suite": r.get("suite") or "", "dataset": r["dataset"], "method": r["method"],
               "ref_frac": float(r["ref_frac"]), "seed": r.get("seed"), "status": r.get("status", "ok"),
               "profile": r.get("profile"), "config_hash": r.get("config_hash"), "ref_size": r.get("ref_size"),
               "config_key": config_key(r), "selection": selection_source(r),
               "ref_held_out": r.get("ref_held_out"),
               # a trunk that knows the labels the bias metric counts: a reference row, never a winner
               "ceiling": record_is_ceiling(r) or knows_labels(r)}
        key["x_name"], key["x"] = x_axis(r)
        if key["status"] != "ok":
            for name in (r.get("config") or {}).get("metrics") or [None]:
                rows.append({**key, "status": "failed", "metric": name, "value": math.nan,
                             "higher_is_better": None})
            continue
        for m in r.get("metrics") or []:
            if m.get("name") in LEGACY_LEVELS:  # an older record's bias_floor / fd_floor, read as today's levels
                name = LEGACY_LEVELS[m["name"]]
                m = {"name": name, "value": METRICS.get(name).read_legacy(m, r)}
            v = math.nan if m.get("value") is None else float(m["value"])
            if m["name"] in REF_LEVELS:  # a row of its metric's table, once per seed, never ranked
                metric, _ = REF_LEVELS[m["name"]]
                rows.append({**key, "method": REF_LEVEL_METHOD, "config_key": None, "ceiling": False, "metric": metric,
                             "value": v,
                             "status": "ok" if math.isfinite(v) else "failed", "higher_is_better": False})
                continue
            # a non-finite value is a failure of that metric, to be counted, not averaged or dropped
            rows.append({**key, "status": "ok" if math.isfinite(v) else "failed", "metric": m["name"],
                         "value": v, "higher_is_better": m.get("higher_is_better")})
    cols = ["suite", "dataset", "method", "ref_frac", "seed", "status", "profile", "config_hash", "ref_size",
            "config_key", "selection", "ref_held_out", "ceiling", "metric", "value", "higher_is_better", "x_name",
            "x"]
    df = pd.DataFrame(rows, columns=cols)
    level = df.method == REF_LEVEL_METHOD  # every method's record of a seed holds the same level: keep one
    if level.any():
        firsts = df[level].drop_duplicates(["suite", "dataset", "metric", "ref_frac", "x_name", "x", "seed"])
        df = pd.concat([df[~level], firsts], ignore_index=True)
    unnamed = df.metric.isna()
    if unnamed.any():  # a failed record that does not say its metrics: count it against every metric seen
        seen = df[~unnamed].groupby(["suite", "dataset"]).metric.unique()
        extra = []
        for _, r in df[unnamed].iterrows():
            for name in seen.get((r.suite, r.dataset), [ANY_METRIC]):
                extra.append({**r.to_dict(), "metric": name})
        df = pd.concat([df[~unnamed], pd.DataFrame(extra, columns=cols)], ignore_index=True)
    return df


def aggregate(df: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per (suite, dataset, metric, method, ref_frac): n ok seeds, failed seeds, mean, std, interval, direction
    and the best/tie mark of the cell within its ref_frac column."""
    cols = KEY + ["higher_is_better", "n", "failed", "mean", "std", "ci_half", "ci_low", "ci_high", "mark",
                  "test", "ceiling", "profiles", "ref_size", "ref_held_out", "selection", "configs", "rule_reference"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out, values = [], {}
    for key, g in df.groupby(KEY, sort=True):
        good = g[g.status == "ok"]
        values[len(out)] = dict(zip(good.seed, good.value, strict=True))  # per seed, for paired comparisons
        ok = good.value
        n = int(ok.count())
        mean = float(ok.mean()) if n else math.nan
        std = float(ok.std(ddof=1)) if n > 1 else math.nan
        half = ci_halfwidth(std, n, confidence)
        recorded = g.higher_is_better.dropna()
        sizes = g.ref_size.dropna().unique()
        held = g.ref_held_out.dropna().unique() if "ref_held_out" in g else []
        sources = g.selection.dropna().unique() if "selection" in g else []
        out.append({**dict(zip(KEY, key, strict=True)),
                    "higher_is_better": False if key[2] == ANY_METRIC else
                    direction(key[2], recorded.iloc[0] if len(recorded) else None),
                    "n": n, "failed": int((g.status != "ok").sum()), "mean": mean, "std": std,
                    "ci_half": half, "ci_low": mean - half, "ci_high": mean + half, "mark": "", "test": "",
                    "ceiling": bool(g.ceiling.fillna(False).astype(bool).any()) if "ceiling" in g else False,
                    "profiles": ",".join(sorted(str(p) for p in g.profile.dropna().unique())),
                    "ref_size": int(sizes[0]) if len(sizes) == 1 else None,
                    "ref_held_out": int(held[0]) if len(held) == 1 else None,
                    "selection": ",".join(sorted(str(x) for x in sources)),
                    "configs": int(g.config_key.dropna().nunique())})
    agg = pd.DataFrame(out, columns=cols)
    columns = agg.groupby(["suite", "dataset", "metric", "ref_frac", "x_name", "x"]).groups
    agg["rule_reference"] = False
    for (_, _, metric, *_), col in columns.items():
        agg.loc[col, "rule_reference"] = rule_references(agg.loc[col])
        if not ranked(metric):
            continue
        verdicts = column_verdicts(agg.loc[col], {i: values[i] for i in col})
        for i, (mark, test) in verdicts.items():
            agg.at[i, "mark"], agg.at[i, "test"] = mark, test
    return agg


def rule_references(col: pd.DataFrame) -> pd.Series:
    """The cells of a column that are references by their checkpoint rule: those the truth chose, where other
    cells of the column were chosen otherwise (they compete only with others the truth chose)."""
    if "selection" not in col:
        return pd.Series(False, index=col.index)
    by_truth = col.selection.fillna("").astype(str).str.split(",").map(lambda s: TRUTH in s).astype(bool)
    others = col.method != REF_LEVEL_METHOD
    if "ceiling" in col:
        others &= ~col.ceiling.astype(bool)
    mixed = by_truth[others].any() and not by_truth[others].all()
    return by_truth & others if mixed else pd.Series(False, index=col.index)


def paired_log_test(a: dict, b: dict) -> tuple[float, float] | None:
    """(mean, two-sided p) of the Student-t test on the per-seed differences a − b over the seeds both hold,
    of the logs where every value is positive (error metrics vary by a factor between seeds, so a ratio is
    what repeats); None below two shared seeds. The one paired test the leaderboard and its flags decide by."""
    seeds = sorted(set(a) & set(b) - {None}, key=str)
    if len(seeds) < 2:
        return None
    pairs = [(float(a[s]), float(b[s])) for s in seeds]
    log = all(x > 0 and y > 0 for x, y in pairs)
    mean, _, p = paired_t([math.log(x) - math.log(y) if log else x - y for x, y in pairs])
    return mean, p


def _comparison(lead: pd.Series, other: pd.Series, values: dict[Any, dict]) -> tuple[str, float, bool | None]:
    """(test, p, separated) of ``other`` against the leader. "paired" where the cells share two or more
    seeds: a Student-t test on the per-seed differences, of the logs where every value is positive (error
    metrics vary by a factor between seeds, so a ratio is what repeats); p for Holm's correction, and
    separated None until it decides. Else "unpaired": the cells' own intervals, separated when they do
    not overlap (a cell without an interval overlaps everything)."""
    test = paired_log_test(values.get(other.name, {}), values.get(lead.name, {}))
    if test is not None:
        mean, p = test
        worse = mean < 0 if bool(lead.higher_is_better) else mean > 0  # only a worse method leaves the lead
        return "paired", (p if worse else 1.0), None
    if lead.n < 2 or other.n < 2:
        return "unpaired", math.nan, False
    return "unpaired", math.nan, not (lead.ci_low <= other.ci_high and other.ci_low <= lead.ci_high)


def column_verdicts(col: pd.DataFrame, values: dict[Any, dict] | None = None) -> dict[Any, tuple[str, str]]:
    """Index -> (mark, test) for the ranked cells of one column (methods at one ref_frac): mark "best",
    "tie" or ""; test how the cell was compared with the leader ("lead" for the leader itself).

    Reference levels and ceilings are references, never ranked. The leader (best mean) is best only when every other
    method is separated from it; otherwise it and every method not separated from it are tied. Paired
    tests (``values``: index -> {seed: value}) are Holm-corrected over the column's paired comparisons at
    the report's confidence level.
    """
    valid = col[(col.n > 0) & (col.method != REF_LEVEL_METHOD) & ~col.get("ceiling", False)]  # references
    valid = valid[~rule_references(valid)]
    if len(valid) < 2:
        return {}
    hib = bool(valid.higher_is_better.iloc[0])
    ranked_ = valid.sort_values("mean", ascending=not hib, kind="stable")
    lead = ranked_.iloc[0]
    found = {i: _comparison(lead, r, values or {}) for i, r in ranked_.iloc[1:].iterrows()}
    paired = [i for i, (_, _, sep) in found.items() if sep is None]
    decided = dict(zip(paired, holm([found[i][1] for i in paired], 1 - CONFIDENCE), strict=True))
    tied = [i for i, (_, _, sep) in found.items() if not (decided[i] if sep is None else sep)]
    out = {i: ("tie" if i in tied else "", found[i][0]) for i in found}
    out[ranked_.index[0]] = ("tie" if tied else "best", "lead")
    return out


def mark_column(col: pd.DataFrame, values: dict[Any, dict] | None = None) -> dict[Any, str]:
    """Index -> "best" or "tie" for the leaders of one column (see :func:`column_verdicts`)."""
    return {i: mark for i, (mark, _) in column_verdicts(col, values).items() if mark}


# -- cell text ----------------------------------------------------------------------------------------
def _num(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


def _decimals(std: float) -> int | None:
    """Decimals that show the std to two significant figures; None where fixed point would not read well."""
    if not math.isfinite(std) or std <= 0:
        return None
    d = 1 - math.floor(math.log10(std))
    return d if 0 <= d <= 6 else None


def cell_parts(r: pd.Series) -> tuple[str, str]:
    """(main text, detail text) of one table cell, without markup; mean, std and CI share one precision."""
    if r.n == 0:
        return "failed", f"{r.failed}/{r.failed} seeds"
    d = _decimals(r["std"]) if r.n > 1 else None
    num = (lambda x: f"{x:.{d}f}") if d is not None else _num
    if r.n == 1:
        main, detail = num(r["mean"]), "n=1, no CI"
    else:
        main = f"{num(r['mean'])} ± {num(r['std']) if d is not None else _num(r['std'], 2)}"
        detail = f"[{num(r.ci_low)}, {num(r.ci_high)}] n={r.n}"
    if r.failed:
        detail += f", {r.failed} failed"
    if r.get("configs", 1) > 1:  # stale seeds of an earlier config beside fresh ones: not one experiment
        detail += f", MIXED: {r.configs} configs"
    flags = r.get("cell_flags")  # tiwbench.report.flags, where the report computed them
    if isinstance(flags, list) and flags:
        detail += " ⚑ " + ", ".join(flags)
    return main, detail


def table_flag_note(t: dict[str, Any]) -> str:
    """What a table's flags say, without markup ("" when it raises none)."""
    if not t.get("flags"):
        return ""
    return "⚑ " + "; ".join(f"{TABLE_FLAGS.get(f, f)} ({f})" for f in t["flags"])


def _column_label(f: float, sub: pd.DataFrame) -> str:
    at = sub[(sub.x == f) & (sub.method != REF_LEVEL_METHOD)]
    sizes = at.ref_size.dropna().unique()
    held = at.ref_held_out.dropna().unique() if "ref_held_out" in at else []
    name = "" if sub.x_name.iloc[0] == "ref_frac" else f"{sub.x_name.iloc[0]}="
    if len(sizes) != 1:
        return f"{name}{f:g}"
    # D_ref's points held out for checkpoint selection: trained on N_ref, held out the rest
    return f"{name}{f:g} (N_ref={int(sizes[0])}" + (f"+{int(held[0])} held out)" if len(held) == 1 else ")")


def row_order(sub: pd.DataFrame) -> list[str]:
    """The rows of a table: the ranked methods, then the ceilings, then the reference level (references last)."""
    ceilings = set(sub.method[sub.ceiling.astype(bool)]) if "ceiling" in sub else set()
    methods = sorted(set(sub.method) - ceilings - {REF_LEVEL_METHOD})
    return methods + sorted(ceilings) + ([REF_LEVEL_METHOD] if REF_LEVEL_METHOD in set(sub.method) else [])


def row_label(t: dict[str, Any], method: str) -> str:
    """A row's name as shown: ceilings labelled as the reference rows they are."""
    return f"{method} ({CEILING_LABEL})" if method in t.get("ceilings", ()) else method


def unpaired_note(t: dict[str, Any]) -> str:
    """Where a table's ties were decided without pairing (no shared seeds), as one line; "" where none."""
    where = [f"{m} at {label}" for m in t["methods"] for f, label in zip(t["fracs"], t["labels"], strict=True)
             if (r := t["cells"].get((m, f))) is not None and r.get("test") == "unpaired"]
    return f"Compared without pairing (no seeds shared with the leader): {', '.join(where)}." if where else ""


def tables(agg: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per (suite, dataset, metric): title fields and the rows of aggregated cells."""
    out = []
    for (suite, ds, metric, panel), sub in agg.assign(panel=panel_key(agg)).groupby(
            ["suite", "dataset", "metric", "panel"], sort=True):
        fracs = sorted(sub.x.unique())  # the columns: values of the x-axis
        ceilings = sorted(set(sub.method[sub.ceiling.astype(bool)])) if "ceiling" in sub else []
        out.append({"suite": suite, "dataset": ds, "metric": metric, "panel": panel,
                    "higher_is_better": bool(sub.higher_is_better.iloc[0]), "fracs": fracs,
                    "labels": [_column_label(f, sub) for f in fracs], "methods": row_order(sub),
                    "ceilings": ceilings,
                    "selection": sorted({x for xs in sub.selection[sub.method != REF_LEVEL_METHOD].dropna()
                                         for x in str(xs).split(",") if x}) if "selection" in sub else [],
                    "profiles": sorted({p for ps in sub.profiles for p in ps.split(",") if p}),
                    "flags": list(sub.table_flags.iloc[0]) if "table_flags" in sub else [],
                    "cells": {(r.method, r.x): r for _, r in sub.iterrows()}})
    return out


def table_title(t: dict[str, Any]) -> str:
    arrow = "↑" if t["higher_is_better"] else "↓"
    prof = f", profile {'/'.join(t['profiles'])}" if t["profiles"] else ""
    mixed = " (mixed profiles!)" if len(t["profiles"]) > 1 else ""
    swept = f", {t['panel']}" if t.get("panel", "ref_frac") != "ref_frac" else ""
    rule = f", checkpoints: {'/'.join(t['selection'])}" if t.get("selection") else ""
    return f"{t['dataset']} · {t['metric']} {arrow}  (suite {t['suite']}{swept}{prof}{mixed}{rule})"


LEGEND = (f"Rows: method; columns: ref_frac (or the suite's swept parameter). "
          f"Mean ± std over seeds, [{CONFIDENCE:.0%} Student-t CI], n seeds. "
          "Bold: best, separated from every other ranked method; ≈: the leader and the methods not separated "
          "from it (a tie). Separated: where two cells share seeds (same split, ratio model and latents), a "
          "paired Student-t test on the per-seed differences (of the logs where every value is positive), "
          f"Holm-corrected over the column's paired comparisons at {1 - CONFIDENCE:.0%}; where they share none, "
          "non-overlapping CIs. n=1 has no CI and cannot be separated from the leader. "
          f"({CEILING_LABEL}): a method no practitioner can run (the oracle's unbiased set, exact ratios), shown "
          "for reference and never ranked. –: not run; failed cells are counted. "
          "(reference level), a reference row, never ranked: the rms bias of as many samples as a method generated, "
          "labelled in D_ref's own proportions (what reproducing D_ref exactly would score), and the fd of as many "
          "fresh samples of the truth; levels to read against, not bounds (a method can land below by chance or "
          "by smoothing). bias_ref, never ranked: bias against D_ref's proportions. "
          "Checkpoints: the rule that chose each cell's snapshot (train.selection.source): d_ref_holdout (scored "
          "on D_ref's held-out points, N_ref+k: k held out of every fit), none (the last step), truth (scored "
          "against the unbiased target, which no practitioner has: flagged, and never ranked beside other rules). "
          "⚑ flags (tiwbench.report.flags): unconverged (table: the oracle's interval worse than another method's), "
          "mixed_selection (table: rules mixed), selected_by_truth, "
          "peak_not_reached (most seeds chose the last snapshot), n_lt_3, at_reference_level, budget_moved.")


# -- formats ------------------------------------------------------------------------------------------
def to_markdown(agg: pd.DataFrame) -> str:
    if agg.empty:
        return "no records found\n"
    parts = [f"_{LEGEND}_\n"]
    for t in tables(agg):
        note = table_flag_note(t)
        lines = [f"### {table_title(t)}", *([f"**{note}**"] if note else []), "",
                 "| method | " + " | ".join(t["labels"]) + " |", "|---|" + "---|" * len(t["fracs"])]
        for m in t["methods"]:
            cells = []
            for f in t["fracs"]:
                r = t["cells"].get((m, f))
                if r is None:
                    cells.append("–")  # never run: not the same as failed
                    continue
                main, detail = cell_parts(r)
                if r.n == 0:
                    main = "**failed**"
                    detail = f"({detail})"
                elif r.mark == "best":
                    main = f"**{main}**"
                elif r.mark == "tie":
                    main = f"≈ {main}"
                cells.append(f"{main} {detail}")
            lines.append(f"| {row_label(t, m)} | " + " | ".join(cells) + " |")
        note = unpaired_note(t)
        parts.append("\n".join(lines) + "\n" + (f"\n_{note}_\n" if note else ""))
    return "\n".join(parts)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(c, c) for c in s)


def to_latex(agg: pd.DataFrame) -> str:
    """Tables for a paper: booktabs rules, ± and ≈ as math."""
    parts = [f"% {LEGEND}", "% needs \\usepackage{booktabs}"]
    for t in tables(agg):
        arrow = r"$\uparrow$" if t["higher_is_better"] else r"$\downarrow$"
        lines = [r"\begin{table}[t]", r"\centering",
                 rf"\caption{{{_tex(t['dataset'])}, {_tex(t['metric'])} {arrow} (suite {_tex(t['suite'])}): "
                 rf"mean $\pm$ std over seeds, {_tex(f'{CONFIDENCE:.0%}')} CI in brackets.}}",
                 r"\begin{tabular}{l" + "c" * len(t["fracs"]) + "}", r"\toprule",
                 "method & " + " & ".join(_tex(x) for x in t["labels"]) + r" \\", r"\midrule"]
        for m in t["methods"]:
            cells = []
            for f in t["fracs"]:
                r = t["cells"].get((m, f))
                if r is None:
                    cells.append("--")
                    continue
                main, detail = cell_parts(r)
                main = _tex(main).replace("±", r"$\pm$")
                if r.n == 0:
                    main = r"\textit{failed}"
                elif r.mark == "best":
                    main = rf"\textbf{{{main}}}"
                elif r.mark == "tie":
                    main = rf"$\approx$ {main}"
                cells.append(rf"{main} {{\scriptsize {_tex(detail)}}}")
            lines.append(f"{_tex(row_label(t, m))} & " + " & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return _clean(v.item())
    return v


def tidy(agg: pd.DataFrame, joined: bool = False) -> list[dict[str, Any]]:
    """Aggregated cells as plain dicts (NaN -> None): the csv and json formats; with the report's flags
    (lists, or ";"-joined strings for csv with ``joined``) where they were computed."""
    cols = KEY + ["higher_is_better", "n", "failed", "mean", "std", "ci_low", "ci_high", "ci_half", "mark",
                  "test", "ceiling", "profiles", "ref_size", "ref_held_out", "selection", "verdict"]
    cols = [c for c in cols if c in agg] + [c for c in ("cell_flags", "table_flags") if c in agg]
    out = [{c: _clean(r[c]) for c in cols} for _, r in agg.iterrows()]
    for row in out:
        for c in ("cell_flags", "table_flags"):
            if c in row:
                row[c] = ";".join(row[c]) if joined else list(row[c])
    return out


def to_json(agg: pd.DataFrame) -> str:
    doc = {"confidence": CONFIDENCE, "cells": tidy(agg)}
    if "table_flags" in agg:  # one entry per table, so a reader need not collect them from the cells
        tabs = tables(agg)
        doc["tables"] = [{k: t[k] for k in ("suite", "dataset", "metric", "panel", "selection", "flags")}
                         for t in tabs]
    return json.dumps(doc, indent=2) + "\n"


def to_csv(agg: pd.DataFrame) -> str:
    rows = tidy(agg, joined=True)
    return pd.DataFrame(rows, columns=list(rows[0]) if len(agg) else KEY).to_csv(index=False)


# -- entry points -------------------------------------------------------------------------------------
def load_runs(runs: Path) -> list[dict[str, Any]]:
    if not Path(runs).is_dir():
        raise FileNotFoundError(f"{runs} is not a directory; run `tiwbench run` first or pass --runs DIR")
    try:
        records = load_records(runs)
    except ValueError as e:
        raise ReportError(str(e)) from None
    if not records:
        raise FileNotFoundError(f"no records under {runs}; run `tiwbench run --suite smoke` first or pass --runs DIR")
    return records


def summarize(runs: Path) -> pd.DataFrame:
    return aggregate(records_frame(load_runs(runs)))
