"""The gap report: how much of the fair ceiling's gain over DSM on D_ref each method recovers.

Per (dataset, ref_frac, swept value, metric) and method M, paired by seed (every method of a seed shares the
split and the sampling latents):

- M − dsm_ref and M − C, with C the fair ceiling (a method that learns from D_ref with a ratio known up to what
  D_ref tells: ``tiw_dsm@exact_empirical`` under label bias, a ratio fitted within the correct family under the
  tilt), each as mean ± Student-t half-width over the seeds;
- the share of the ceiling's gain that M recovers, mean(dsm_ref − M) / mean(dsm_ref − C) over the seeds all three
  finished (1: as good as the ceiling; 0: no better than dsm_ref; below 0: worse), with a percentile bootstrap
  interval over seeds (seeds resampled with replacement);

and beside it, per learned estimator, the ratio study's errors per σ band (log w and σ²∇log w relative to their
signal, against the dataset's closed form), so that a verdict is tied to its cause.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tiwbench.report.intervals import CONFIDENCE, ReportError
from tiwbench.report.leaderboard import REF_LEVEL_METHOD, records_frame, x_axis
from tiwbench.report.paired import paired_interval

BASELINE = "dsm_ref"
# the fair ceiling per dataset (a dataset not named here: DEFAULT_CEILING); the tilt has no label proportions
# to re-weight, so its ceiling is the ratio fitted within the tilted family
CEILINGS = {"gmm_tilt": "tiw_dsm@fitted_family"}
DEFAULT_CEILING = "tiw_dsm@exact_empirical"
BOOTSTRAP = 2000
COLUMNS = ["suite", "dataset", "ref_frac", "x_name", "x", "metric", "method", "ceiling", "n", "vs_ref", "vs_ref_half",
           "vs_ceiling", "vs_ceiling_half", "share", "share_lo", "share_hi"]


def ceiling_of(dataset: str, ceiling: str | None = None) -> str:
    return ceiling or CEILINGS.get(dataset, DEFAULT_CEILING)


def share_interval(ref: list[float], m: list[float], ceil: list[float], n_boot: int = BOOTSTRAP,
                   confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(share, lo, hi): share = mean(ref − m) / mean(ref − ceil); its percentile bootstrap interval over seeds.
    NaN where the ceiling's mean gain is 0 (in the estimate or a resample: that resample is left out)."""
    ref_a, m_a, c_a = (np.asarray(v, dtype=float) for v in (ref, m, ceil))
    gain, full = ref_a - m_a, ref_a - c_a
    share = float(gain.mean() / full.mean()) if full.mean() != 0 else math.nan
    if len(ref_a) < 2:
        return share, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ref_a), size=(n_boot, len(ref_a)))
    den = full[idx].mean(1)
    ok = den != 0
    boots = gain[idx].mean(1)[ok] / den[ok]
    if not len(boots):
        return share, math.nan, math.nan
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return share, float(lo), float(hi)


def gap_table(df: pd.DataFrame, ceiling: str | None = None) -> pd.DataFrame:
    """One row per (suite, dataset, ref_frac, swept value, metric, method ≠ dsm_ref, ceiling) from ``records_frame``;
    methods pair within a suite (the same cells under another checkpoint rule or budget are another suite)."""
    ok = df[(df.status == "ok") & (df.method != REF_LEVEL_METHOD)]
    if BASELINE not in set(ok.method):
        raise ReportError(f"--gap needs {BASELINE} records (the baseline every method is compared with)")
    rows = []
    for (suite, ds, frac, x_name, x, metric), g in ok.groupby(["suite", "dataset", "ref_frac", "x_name", "x", "metric"],
                                                              sort=True):
        ceil_name = ceiling_of(ds, ceiling)
        by = {m: gm.set_index("seed").value for m, gm in g.groupby("method")}
        if BASELINE not in by:
            continue
        base, ceil = by[BASELINE], by.get(ceil_name)
        for method in sorted(set(by) - {BASELINE}):
            vals = by[method]
            seeds = sorted(set(vals.index) & set(base.index))
            if not seeds:
                continue
            d_ref, h_ref = paired_interval([float(vals[s] - base[s]) for s in seeds])
            row = {"suite": suite, "dataset": ds, "ref_frac": frac, "x_name": x_name, "x": x, "metric": metric,
                   "method": method, "ceiling": ceil_name, "n": len(seeds), "vs_ref": d_ref, "vs_ref_half": h_ref,
                   "vs_ceiling": math.nan, "vs_ceiling_half": math.nan, "share": math.nan, "share_lo": math.nan,
                   "share_hi": math.nan}
            if ceil is not None and method != ceil_name:
                both = [s for s in seeds if s in ceil.index]
                if both:
                    row["n"] = len(both)
                    row["vs_ceiling"], row["vs_ceiling_half"] = paired_interval(
                        [float(vals[s] - ceil[s]) for s in both])
                    row["vs_ref"], row["vs_ref_half"] = paired_interval([float(vals[s] - base[s]) for s in both])
                    row["share"], row["share_lo"], row["share_hi"] = share_interval(
                        [float(base[s]) for s in both], [float(vals[s]) for s in both], [float(ceil[s]) for s in both])
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _pm(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:+.3g}" + (f" ± {half:.2g}" if math.isfinite(half) else "")


def _verdict(mean: float, half: float) -> str:
    if not (math.isfinite(mean) and math.isfinite(half)) or abs(mean) <= half:
        return "≈"
    return "+" if mean > 0 else "−"


def _share(r) -> str:
    if not math.isfinite(r.share):
        return "–"
    return f"{r.share:.2f}" + (f" [{r.share_lo:.2f}, {r.share_hi:.2f}]" if math.isfinite(r.share_lo) else "")


def _where(r) -> str:
    return f"{r.ref_frac:g}" + ("" if r.x_name == "ref_frac" else f" · {r.x_name}={r.x:g}")


def band_errors(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The ratio study's per-band errors (mean ± half-width over seeds) per (dataset, ref_frac, swept value,
    estimator, band): the records of each swept value apart, as the study's own tables pool over ref_frac only."""
    from tiwbench.report.ratio_study import aggregate_bands, band_frame

    parts = []
    groups: dict[tuple, list] = {}
    for r in records:
        if r.get("status", "ok") == "ok":
            groups.setdefault(x_axis(r), []).append(r)
    for (x_name, x), recs in sorted(groups.items()):
        agg = aggregate_bands(band_frame(recs))
        if len(agg):
            parts.append(agg.assign(x_name=x_name, x=x))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _bands_markdown(bands: pd.DataFrame, ds: str, frac: float, x_name: str, x: float) -> list[str]:
    from tiwbench.report.ratio_study import _band, _cell

    sub = bands[(bands.dataset == ds) & (bands.ref_frac == frac) & (bands.x_name == x_name) & (bands.x == x)]
    sub = sub[~sub.estimator.str.startswith("classifier")]
    if sub.empty:
        return []
    edges = sorted({(lo, hi) for lo, hi in zip(sub.sigma_lo, sub.sigma_hi, strict=True)})
    lines = ["", f"Ratio errors per σ band (relative to the signal, against the closed form; mean ± half-width "
                 f"over seeds), {ds} at ref_frac {frac:g}" + ("" if x_name == "ref_frac" else f", {x_name}={x:g}")
             + ":", "",
             "| estimator | measure | " + " | ".join(_band(lo, hi) for lo, hi in edges) + " |",
             "|---|---" + "|---" * len(edges) + "|"]
    for est in sorted(set(sub.estimator)):
        by_band = {(r.sigma_lo, r.sigma_hi): r for r in sub[sub.estimator == est].itertuples()}
        for measure, name in (("log_w", "log w"), ("correction", "σ²∇log w")):
            cells = [_cell(getattr(by_band[b], measure), getattr(by_band[b], f"{measure}_ci"),
                           getattr(by_band[b], f"{measure}_n")) if b in by_band else "–" for b in edges]
            lines.append(f"| {est} | {name} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(records: list[dict[str, Any]], ceiling: str | None = None) -> str:
    table = gap_table(records_frame(records), ceiling)
    bands = band_errors(records)
    lines = ["### Gap to the fair ceiling",
             f"_Per method M, paired by seed: M − {BASELINE} and M − ceiling (mean ± {CONFIDENCE:.0%} Student-t "
             f"half-width; +/− the interval excludes 0, ≈ it does not); share of the ceiling's gain M recovers = "
             f"mean({BASELINE} − M) / mean({BASELINE} − ceiling) over the seeds all three finished, with a "
             f"{CONFIDENCE:.0%} percentile bootstrap interval over seeds ({BOOTSTRAP} resamples). Ceiling: "
             f"{DEFAULT_CEILING} under label bias, "
             + ", ".join(f"{v} on {k}" for k, v in CEILINGS.items())
             + (f" (here: {ceiling} everywhere)" if ceiling else "") + "; '–' where the records lack it._", ""]
    several = table.suite.nunique() > 1
    for (suite, ds, frac, x_name, x), sub in table.groupby(["suite", "dataset", "ref_frac", "x_name", "x"], sort=True):
        lines += [f"**{ds}, ref_frac {frac:g}" + ("" if x_name == "ref_frac" else f", {x_name}={x:g}")
                  + (f", suite {suite}" if several else "") + f"** (ceiling {sub.ceiling.iloc[0]})", "",
                  f"| metric | method | n | M − {BASELINE} | | M − ceiling | | share of the ceiling's gain |",
                  "|---|---|---|---|---|---|---|---|"]
        for metric, rows in sub.groupby("metric", sort=True):
            top = rows[rows.method == rows.ceiling]
            resolved = len(top) and _verdict(top.iloc[0].vs_ref, top.iloc[0].vs_ref_half) != "≈"
            for _, r in pd.concat([top, rows[rows.method != rows.ceiling]]).iterrows():
                if r.method == r.ceiling:
                    share = "1 (the ceiling)" if resolved else "the ceiling; its gain is not resolved from 0"
                else:
                    share = _share(r) + ("" if resolved or not math.isfinite(r.share) else " (ceiling's gain ≈ 0)")
                lines.append(f"| {metric} | {r.method} | {r.n} | {_pm(r.vs_ref, r.vs_ref_half)} | "
                             f"{_verdict(r.vs_ref, r.vs_ref_half)} | {_pm(r.vs_ceiling, r.vs_ceiling_half)} | "
                             f"{_verdict(r.vs_ceiling, r.vs_ceiling_half)} | {share} |")
        if len(bands):
            lines += _bands_markdown(bands, ds, frac, x_name, x)
        lines.append("")
    if table.empty:
        lines.append("_no method shares seeds with dsm_ref_")
    return "\n".join(lines) + "\n"
