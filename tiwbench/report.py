"""Leaderboards from records alone: per dataset and metric, methods × ref_frac, mean ± std over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.registry import METRICS, RegistryError
from tiwbench.results import load_records


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (cell, metric); failed cells get one row with status 'failed' and no value."""
    rows = []
    for r in records:
        key = {"suite": r.get("suite"), "dataset": r["dataset"], "method": r["method"],
               "ref_frac": r["ref_frac"], "seed": r["seed"], "status": r.get("status", "ok")}
        if key["status"] != "ok":
            for name in r.get("config", {}).get("metrics", []) or [None]:
                rows.append({**key, "metric": name, "value": math.nan, "higher_is_better": None})
            continue
        for m in r["metrics"]:
            rows.append({**key, "metric": m["name"], "value": m["value"], "higher_is_better": m["higher_is_better"]})
    return pd.DataFrame(rows, columns=["suite", "dataset", "method", "ref_frac", "seed", "status", "metric",
                                       "value", "higher_is_better"])


def direction(metric: str, df: pd.DataFrame) -> bool:
    try:
        return bool(METRICS.get(metric).higher_is_better)
    except RegistryError:  # a metric of a plugin not installed here: trust the records
        vals = df.loc[df.metric == metric, "higher_is_better"].dropna()
        return bool(vals.iloc[0]) if len(vals) else False


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """mean, std, n over seeds, per (dataset, metric, method, ref_frac); failures counted apart."""
    ok = df[df.status == "ok"]
    agg = ok.groupby(["dataset", "metric", "method", "ref_frac"])["value"].agg(["mean", "std", "count"]).reset_index()
    failed = (df[df.status != "ok"].groupby(["dataset", "metric", "method", "ref_frac"]).size()
              .rename("failed").reset_index())
    agg = agg.merge(failed, how="outer", on=["dataset", "metric", "method", "ref_frac"])
    agg["failed"] = agg["failed"].fillna(0).astype(int)
    agg["count"] = agg["count"].fillna(0).astype(int)
    return agg


def leaderboard(df: pd.DataFrame) -> list[tuple[str, str, bool, pd.DataFrame]]:
    """(dataset, metric, higher_is_better, table of cell strings) per dataset and metric."""
    agg = aggregate(df)
    out = []
    for (ds, metric), sub in agg.groupby(["dataset", "metric"], sort=True):
        hib = direction(metric, df)
        fracs = sorted(sub.ref_frac.unique())
        methods = sorted(sub.method.unique())
        table = pd.DataFrame(index=methods, columns=[f"{f:g}" for f in fracs], dtype=object)
        for f in fracs:
            col = sub[sub.ref_frac == f]
            valid = col[col["count"] > 0]
            best = None
            if len(valid):
                best = valid.loc[valid["mean"].idxmax() if hib else valid["mean"].idxmin(), "method"]
            for _, r in col.iterrows():
                if r["count"] == 0:
                    cell = f"failed ({r['failed']})"
                else:
                    std = 0.0 if math.isnan(r["std"]) else r["std"]
                    cell = f"{r['mean']:.4g} ± {std:.2g}"
                    if r["method"] == best:
                        cell = f"**{cell}**"
                    if r["failed"]:
                        cell += f" ({r['failed']} failed)"
                table.loc[r["method"], f"{f:g}"] = cell
        out.append((ds, metric, hib, table.fillna("–")))
    return out


def render(df: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(aggregate(df).to_dict(orient="records"), indent=2, default=float)
    if fmt == "csv":
        return aggregate(df).to_csv(index=False)
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r}; use markdown, csv or json")
    parts = []
    for ds, metric, hib, table in leaderboard(df):
        arrow = "↑" if hib else "↓"
        parts.append(f"### {ds} · {metric} {arrow}  (rows: method, columns: ref_frac; mean ± std over seeds; "
                     f"best in bold)\n")
        header = "| method | " + " | ".join(table.columns) + " |"
        sep = "|---|" + "---|" * len(table.columns)
        lines = [header, sep] + [f"| {m} | " + " | ".join(str(v) for v in row) + " |" for m, row in table.iterrows()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts) if parts else "no records found\n"


def report(runs: Path, fmt: str = "markdown") -> str:
    records = load_records(runs)
    if not records:
        raise FileNotFoundError(f"no records under {runs}; run `tiwbench run --suite smoke` first or pass --runs DIR")
    return render(records_frame(records), fmt)
