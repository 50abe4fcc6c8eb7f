"""The ratio study: each estimator's error against the closed form per σ band, and its link to the outcome.

Built from records alone. Every record carries the diagnostics of the ratio models of its group
(``record["ratio"][key]["per_sigma"]``, from :func:`tiwbench.ratios.diagnostics.ratio_diagnostics`); models are fitted
lazily, so a group's diagnostics are the union over its records. Per (suite, dataset, ref_frac,
estimator, σ band) and over seeds: the error of log w_σ, of w_σ and of the correction σ²∇log w_σ, each
relative to its signal (mean square of log w, of w − 1, of the exact correction), and the accuracy and
ECE of d (which need no closed form, so they exist on digits too). The clean classifier of IW-DSM
appears as the band σ = 0. Suites enter when they train a method with several estimators
(``method@ratio``).

Two targets where the records have both: the truth (the true proportions over p_bias) and the attainable
target, the best ratio D_ref allows (the truth re-weighted to D_ref's empirical proportions, as
``exact_empirical``). An estimator learns from D_ref, so part of its error against the truth is information
it does not have: that part is the attainable target's own error against the truth (the reference row
``attainable target``), and estimators are compared (the paired tables, the outcome figure) against the
attainable target. Both errors are relative to the truth's signal, so they share one scale.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.report.intervals import CONFIDENCE, ci_halfwidth

MEASURES = {  # column -> (mse key, signal key, title)
    "log_w": ("log_ratio_mse", "log_ratio_norm", "error of log w relative to its signal"),
    "w": ("ratio_mse", "ratio_norm", "error of w relative to its signal"),
    "correction": ("shift_mse", "shift_norm", "error of σ²∇log w relative to its signal"),
    "accuracy": ("accuracy", None, "balanced accuracy of d"),
    "ece": ("ece", None, "expected calibration error of d"),
}
CLEAN = "classifier (σ=0)"
RELATIVE = [c for c, (_, norm, _) in MEASURES.items() if norm is not None]  # the errors with a closed form
# per relative error: against the attainable target (``_att``) and that target's own against the truth (``_gap``)
TARGET_COLS = [f"{c}{t}" for c in RELATIVE for t in ("_att", "_gap")]
VALUE_COLS = [*MEASURES, *TARGET_COLS]
ATTAINABLE_ROW = "attainable target (exact_empirical)"
SIGNAL_FLOOR = 1e-3  # a band's signal below this share of the estimator's largest band: no relative error


def estimator_name(info: dict[str, Any]) -> str:
    """The estimator, and the kernel it was fitted under unless edm (``discriminator~vp``)."""
    provider = info.get("provider", "")
    name = "discriminator" if provider == "learned" else provider  # records written before the registry
    return f"{name}~{info['kernel']}" if info.get("kernel") else name


def schedule_tag(record: dict[str, Any], kernel: str | None) -> str:
    """`` [beta_max=19.9]`` where the record ran ``kernel`` with parameters other than its defaults (its
    config's ``kernel`` section): records of two schedules never share a row. Empty under the defaults."""
    params = ((record.get("config") or {}).get("kernel") or {}).get(kernel or "edm")
    if not params:
        return ""
    from tiwbench.registry import KERNELS, RegistryError

    try:
        defaults = KERNELS.get(kernel or "edm").defaults
    except RegistryError:  # a plugin kernel not installed here: name every parameter
        defaults = {}
    moved = {k: v for k, v in sorted(params.items()) if defaults.get(k) != v}
    return " [" + ", ".join(f"{k}={v:g}" for k, v in moved.items()) + "]" if moved else ""


def _method_estimator(record: dict[str, Any]) -> tuple[str, str | None]:
    """(method, estimator) of a record: ``tiw_dsm@x`` names it, a plain name uses the suite's default;
    a ``~kernel`` suffix stays on both (``tiw_dsm@x~vp``: method ``tiw_dsm~vp``, estimator ``x~vp``)."""
    name, _, kernel = record["method"].partition("~")
    method, _, est = name.partition("@")
    if not est:
        provider = ((record.get("config") or {}).get("ratio") or {}).get("provider")
        est = "discriminator" if provider in (None, "learned") else provider
    suffix = f"~{kernel}" if kernel else ""
    return method + suffix, est + suffix


def compared_suites(records: list[dict[str, Any]]) -> set[str]:
    """Suites that train a method with several estimators or kernels; a suite sweeping a dataset parameter
    (regime's dim) is left to the paired tables and the win map, since these tables pool over ref_frac only."""
    swept = {r.get("suite") or "" for r in records if r.get("sweep")}
    return {r.get("suite") or "" for r in records if "@" in r.get("method", "") or "~" in r.get("method", "")} - swept


def band_frame(records: list[dict[str, Any]], suites: set[str] | None = None) -> pd.DataFrame:
    """One row per (suite, dataset, ref_frac, seed, estimator, σ band) with the relative errors."""
    seen: dict[tuple, dict] = {}
    for r in records:
        suite = r.get("suite") or ""
        if r.get("status") != "ok" or (suites is not None and suite not in suites):
            continue
        for key, info in (r.get("ratio") or {}).items():
            kind = info.get("kind") or key.partition("@")[0]
            name = estimator_name(info) + schedule_tag(r, info.get("kernel")) if kind == "time" else CLEAN
            if kind == "clean" and estimator_name(info) != "discriminator":
                name = f"{CLEAN} {estimator_name(info)}"
            per_sigma = info.get("per_sigma") or []
            # a band whose signal is a negligible share of the estimator's largest (label-only bias: inside a
            # mode w_σ is flat at low σ, its exact correction ~0) has no relative error: NaN, shown as "–"
            largest = {norm: max((b.get(norm, 0.0) for b in per_sigma), default=0.0)
                       for _, norm, _ in MEASURES.values() if norm is not None}
            for row in per_sigma:
                k = (suite, r["dataset"], float(r["ref_frac"]), r.get("seed"), name, row["sigma_lo"], row["sigma_hi"])
                out = {"suite": suite, "dataset": r["dataset"], "ref_frac": float(r["ref_frac"]), "seed": r.get("seed"),
                       "estimator": name, "sigma_lo": row["sigma_lo"], "sigma_hi": row["sigma_hi"]}
                for col, (mse, norm, _) in MEASURES.items():
                    recorded = {col: mse} if norm is None else {col: mse, f"{col}_att": f"{mse}_att",
                                                                f"{col}_gap": mse.replace("_mse", "_gap")}
                    has_signal = norm is None or row.get(norm, 0) > SIGNAL_FLOOR * largest[norm]
                    for column, field in recorded.items():
                        v = row.get(field, math.nan)
                        out[column] = (v if norm is None else v / row[norm]) if has_signal else math.nan
                seen[k] = out
    cols = ["suite", "dataset", "ref_frac", "seed", "estimator", "sigma_lo", "sigma_hi", *VALUE_COLS]
    return pd.DataFrame(list(seen.values()), columns=cols)


def aggregate_bands(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, Student-t half-width and seed count of each measure per (suite, dataset, ref_frac, estimator, band);
    and a row ``attainable target`` per (suite, dataset, ref_frac, band): that target's own error against
    the truth (each seed's mean over the estimators that measured it, then over seeds)."""
    keys = ["suite", "dataset", "ref_frac", "estimator", "sigma_lo", "sigma_hi"]
    gaps = df[~df.estimator.str.startswith(CLEAN)]
    gaps = gaps.groupby(["suite", "dataset", "ref_frac", "seed", "sigma_lo", "sigma_hi"], as_index=False)[
        [f"{c}_gap" for c in RELATIVE]].mean()
    gaps = gaps.rename(columns={f"{c}_gap": c for c in RELATIVE}).assign(estimator=ATTAINABLE_ROW)
    gaps = gaps[gaps[RELATIVE].notna().any(axis=1)]
    df = pd.concat([df, gaps], ignore_index=True) if len(gaps) else df
    out = []
    for key, g in df.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        for col in VALUE_COLS:
            v = g[col].dropna()
            n = int(v.count())
            row[col] = float(v.mean()) if n else math.nan
            row[f"{col}_ci"] = ci_halfwidth(float(v.std(ddof=1)), n) if n > 1 else math.nan
            row[f"{col}_n"] = n
        out.append(row)
    return pd.DataFrame(out)


def reference_of(estimator: str) -> list[str]:
    """What an estimator's errors are paired against: the same estimator under edm (``dlsm~vp`` against
    ``dlsm``: which kernel), and the plain discriminator under the same kernel (``dlsm~vp`` against
    ``discriminator~vp``: which estimator)."""
    name, _, kernel = estimator.partition("~")
    out = [name] if kernel else []
    if name != "discriminator":
        out.append("discriminator" + (f"~{kernel}" if kernel else ""))
    return out


def attainable_known(df: pd.DataFrame) -> bool:
    """Whether every learned estimator's rows carry the error against the attainable target (records
    written before it was measured, or datasets without a re-weightable mixture, do not)."""
    learned = df[~df.estimator.str.startswith(CLEAN)]
    return bool(len(learned)) and all(learned[c].isna().equals(learned[f"{c}_att"].isna()) for c in RELATIVE)


def paired_band_ratios(df: pd.DataFrame, measures: tuple[str, ...] = ("log_w", "correction"),
                       target: str = "att") -> pd.DataFrame:
    """Per (suite, dataset, ref_frac, σ band, estimator, reference, measure): the mean over seeds of
    log10(error / reference's error), paired by seed (the seeds share data and splits), with its Student-t
    half-width. A log ratio, because the relative errors span orders of magnitude between seeds. The
    errors are against the attainable target (``target="att"``, the ranking's) or the truth (``""``)."""
    keys = ["suite", "dataset", "ref_frac", "sigma_lo", "sigma_hi", "seed"]
    df = df[~df.estimator.str.startswith(CLEAN)]
    by_est = {e: g.set_index(keys) for e, g in df.groupby("estimator")}
    rows = []
    for est, g in by_est.items():
        for ref in reference_of(est):
            if ref not in by_est:
                continue
            for col in measures:
                c = f"{col}_{target}" if target else col
                both = pd.concat([g[c].rename("a"), by_est[ref][c].rename("b")], axis=1, join="inner")
                both = both[(both.a > 0) & (both.b > 0)]
                lr = (both.a / both.b).map(math.log10)
                for band, v in lr.groupby(level=["suite", "dataset", "ref_frac", "sigma_lo", "sigma_hi"]):
                    n = int(v.count())
                    rows.append(dict(zip(["suite", "dataset", "ref_frac", "sigma_lo", "sigma_hi"], band, strict=True),
                                     estimator=est, against=ref, measure=col, n=n, mean=float(v.mean()),
                                     ci=ci_halfwidth(float(v.std(ddof=1)), n) if n > 1 else math.nan))
    return pd.DataFrame(rows, columns=["suite", "dataset", "ref_frac", "sigma_lo", "sigma_hi", "estimator", "against",
                                       "measure", "n", "mean", "ci"])


def outcome_frame(records: list[dict[str, Any]], suites: set[str] | None = None, metric: str = "bias",
                  correction_from: float = 0.0) -> pd.DataFrame:
    """Per time-dependent-ratio record: its estimator, the correction error pooled over its σ bands from
    ``correction_from`` up (Σ mse / Σ signal: the relative error under the diagnostics' log-uniform σ),
    against the truth and (``correction_error_att``, NaN where not recorded) against the attainable target,
    and the record's final ``metric``."""
    rows = []
    for r in records:
        suite = r.get("suite") or ""
        if r.get("status") != "ok" or (suites is not None and suite not in suites):
            continue
        method, est = _method_estimator(r)
        tag = schedule_tag(r, r["method"].partition("~")[2])
        method, est = method + tag, est + tag
        value = next((m["value"] for m in r.get("metrics") or [] if m["name"] == metric), math.nan)
        err = err_att = math.nan
        for key, info in (r.get("ratio") or {}).items():
            kind = info.get("kind") or key.partition("@")[0]
            if kind == "time" and estimator_name(info) + tag == est and info.get("per_sigma"):
                bands = [b for b in info["per_sigma"] if b["sigma_lo"] >= correction_from and "shift_mse" in b]
                norm = sum(b["shift_norm"] for b in bands)
                if norm > 0:
                    err = sum(b["shift_mse"] for b in bands) / norm
                    if all("shift_mse_att" in b for b in bands):
                        err_att = sum(b["shift_mse_att"] for b in bands) / norm
                break
        rows.append({"suite": suite, "dataset": r["dataset"], "ref_frac": float(r["ref_frac"]), "seed": r.get("seed"),
                     "method": r["method"] + tag, "base": method, "estimator": est, "correction_error": err,
                     "correction_error_att": err_att, metric: value})
    return pd.DataFrame(rows, columns=["suite", "dataset", "ref_frac", "seed", "method", "base", "estimator",
                                       "correction_error", "correction_error_att", metric])


def paired_differences(out: pd.DataFrame, metric: str = "bias", against: str = "iw_dsm") -> pd.DataFrame:
    """``metric`` of each method minus ``against``'s on the same (suite, dataset, ref_frac, seed): the
    seeds share data and splits, so the paired difference is the sharper comparison. A method under a
    kernel (``tiw_dsm~vp``) is compared with ``against`` under the same kernel (``iw_dsm~vp``) where there is one."""
    methods = set(out.method)
    rows = []
    for (suite, ds, rf, method), g in out.groupby(["suite", "dataset", "ref_frac", "method"]):
        kernel = method.partition("~")[2]
        base_name = f"{against}~{kernel}" if kernel and f"{against}~{kernel}" in methods else against
        if method == base_name:
            continue
        base = out[out.method == base_name].set_index(["suite", "dataset", "ref_frac", "seed"])[metric]
        d = [v - base[(suite, ds, rf, s)] for s, v in zip(g.seed, g[metric], strict=True)
             if (suite, ds, rf, s) in base.index and math.isfinite(v)]
        n = len(d)
        mean = sum(d) / n if n else math.nan
        std = pd.Series(d).std(ddof=1) if n > 1 else math.nan
        rows.append({"suite": suite, "dataset": ds, "ref_frac": rf, "method": method, "n": n, "diff": mean,
                     "ci": ci_halfwidth(std, n)})
    return pd.DataFrame(rows, columns=["suite", "dataset", "ref_frac", "method", "n", "diff", "ci"])


# -- text ---------------------------------------------------------------------------------------------
def _cell(mean: float, half: float, n: int) -> str:
    if not n or not math.isfinite(mean):
        return "–"
    if not math.isfinite(half):
        return f"{mean:.3g} (n={n})"
    return f"{mean:.3g} ± {half:.2g}"


def _band(lo: float, hi: float) -> str:
    return "σ=0" if hi == 0 else f"{lo:g}–{hi:g}"


def _band_table(sub: pd.DataFrame, col: str) -> list[str]:
    """Rows estimators (the attainable target's reference row last), columns σ bands, cells ``col``."""
    bands = sorted({(lo, hi) for lo, hi in zip(sub.sigma_lo, sub.sigma_hi, strict=True)})
    lines = ["| estimator | " + " | ".join(_band(lo, hi) for lo, hi in bands) + " |", "|---" * (len(bands) + 1) + "|"]
    groups = sorted(sub.groupby("estimator", sort=True), key=lambda kv: kv[0] == ATTAINABLE_ROW)
    for est, rows in groups:
        if rows[f"{col}_n"].sum() == 0:
            continue
        by_band = {(lo, hi): r for lo, hi, (_, r) in zip(rows.sigma_lo, rows.sigma_hi, rows.iterrows(), strict=True)}
        cells = [_cell(by_band[b][col], by_band[b][f"{col}_ci"], by_band[b][f"{col}_n"]) if b in by_band
                 else "–" for b in bands]
        lines.append(f"| {'_' + est + '_' if est == ATTAINABLE_ROW else est} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(records: list[dict[str, Any]]) -> str:
    """The study's tables: per (suite, dataset, ref_frac, measure), rows estimators, columns σ bands; then
    the outcome: each method's bias minus iw_dsm's, paired by seed."""
    suites = compared_suites(records)
    if not suites:
        return ""
    bands_df = band_frame(records, suites)
    agg = aggregate_bands(bands_df)
    parts = ["## Ratio study",
             f"_Per σ band (log-uniform σ, D_bias samples): mean over seeds ± {CONFIDENCE:.0%} Student-t half-width. "
             "Errors are mean squares relative to the signal (the mean square of the exact log w, w − 1 or "
             "σ²∇log w): 1 means as large as what is estimated; square roots read as rms. Each against the truth "
             "(true proportions) and against the attainable target (the truth re-weighted to D_ref's proportions, "
             f"the best ratio D_ref allows); the row '{ATTAINABLE_ROW}' is that target's own error against the "
             "truth, what no estimator learning from D_ref can remove. Estimators are compared against the "
             "attainable target where the records have it. σ=0: IW-DSM's clean classifier. –: no "
             f"relative error, the band's signal being under {SIGNAL_FLOOR:g} of the estimator's largest (e.g. "
             "the correction inside a mode under label-only bias)._"]
    for (suite, ds, rf), sub in agg.groupby(["suite", "dataset", "ref_frac"], sort=True) if len(agg) else []:
        for col, (_, _, title) in MEASURES.items():
            for c, against in ((col, " against the truth"), (f"{col}_att", " against the attainable target")):
                if c not in sub or sub[f"{c}_n"].sum() == 0:
                    continue  # no closed form (digits): only accuracy and ECE
                parts.append(f"\n### {ds} · ref_frac {rf:g} · {title}{against if col in RELATIVE else ''}"
                             f"  (suite {suite})\n")
                parts += _band_table(sub[sub[f"{c}_n"] > 0] if c != col else sub, c)
    pairs = paired_band_ratios(bands_df, target="att" if attainable_known(bands_df) else "")
    target = "the attainable target" if attainable_known(bands_df) else "the truth (no attainable target recorded)"
    for (suite, ds, rf, col), sub in pairs.groupby(["suite", "dataset", "ref_frac", "measure"], sort=True):
        bands = sorted({(lo, hi) for lo, hi in zip(sub.sigma_lo, sub.sigma_hi, strict=True)})
        parts.append(f"\n### {ds} · ref_frac {rf:g} · {MEASURES[col][2]} against {target}: log10(error / "
                     f"reference's), paired by seed (negative: more accurate than the reference)  (suite {suite})\n")
        parts.append("| estimator | against | " + " | ".join(_band(lo, hi) for lo, hi in bands) + " |")
        parts.append("|---" * (len(bands) + 2) + "|")
        for (est, ref), rows in sub.groupby(["estimator", "against"], sort=True):
            by_band = {(r.sigma_lo, r.sigma_hi): r for r in rows.itertuples()}
            cells = [_cell(by_band[b].mean, by_band[b].ci, by_band[b].n) if b in by_band else "–" for b in bands]
            parts.append(f"| {est} | {ref} | " + " | ".join(cells) + " |")
    out = outcome_frame(records, suites)
    diffs = paired_differences(out)
    if len(diffs):
        parts.append("\n### bias minus iw_dsm's (under the same kernel), paired by seed (negative: better than "
                     "iw_dsm)\n")
        fracs = sorted(diffs.ref_frac.unique())
        for (suite, ds), sub in diffs.groupby(["suite", "dataset"], sort=True):
            parts.append(f"{ds} (suite {suite})\n")
            parts.append("| method | " + " | ".join(f"{f:g}" for f in fracs) + " |")
            parts.append("|---" * (len(fracs) + 1) + "|")
            for m, rows in sub.groupby("method", sort=True):
                cells = []
                for f in fracs:
                    r = rows[rows.ref_frac == f]
                    cells.append(_cell(r["diff"].iloc[0], r.ci.iloc[0], int(r.n.iloc[0])) if len(r) else "–")
                parts.append(f"| {m} | " + " | ".join(cells) + " |")
            parts.append("")
    return "\n".join(parts) + "\n"


# -- figures ------------------------------------------------------------------------------------------
def error_figure(records: list[dict[str, Any]]):
    """Error against the truth per σ, one line per estimator, error bars over seeds; one row of panels per
    (suite, dataset, ref_frac), one column per measure. The clean classifier is a dashed level; the
    attainable target's own error (the part no estimator learning from D_ref can remove) a black line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate_bands(band_frame(records, compared_suites(records)))
    if agg.empty:
        return None
    groups = list(agg.groupby(["suite", "dataset", "ref_frac"], sort=True))
    cols = [c for c in ("log_w", "w", "correction") if agg[f"{c}_n"].sum() > 0] or ["accuracy", "ece"]
    fig, axes = plt.subplots(len(groups), len(cols), figsize=(4.6 * len(cols), 3.4 * len(groups)), squeeze=False)
    estimators = sorted(e for e in agg.estimator.unique() if not e.startswith(CLEAN) and e != ATTAINABLE_ROW)
    colors = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(estimators)}
    colors[ATTAINABLE_ROW] = "black"
    estimators.append(ATTAINABLE_ROW)
    for row, ((_, ds, rf), sub) in enumerate(groups):
        for c, col in enumerate(cols):
            ax = axes[row, c]
            for e in estimators:
                r = sub[(sub.estimator == e) & (sub[f"{col}_n"] > 0)].sort_values("sigma_lo")
                if r.empty:
                    continue
                x = (r.sigma_lo * r.sigma_hi) ** 0.5
                ax.errorbar(x, r[col], yerr=r[f"{col}_ci"].fillna(0.0), marker="o", ms=4, capsize=3, lw=1.3,
                            color=colors[e], label=e)
            clean = sub[(sub.estimator.str.startswith(CLEAN)) & (sub[f"{col}_n"] > 0)]
            for _, r in clean.iterrows():
                ax.axhline(r[col], ls="--", color="0.4", lw=1, label=f"{r.estimator}")
            ax.set_xscale("log")
            if col in ("log_w", "w", "correction"):
                ax.set_yscale("log")
            ax.set_xlabel("σ (band centre)")
            ax.set_title(f"{ds} · ref {rf:g} · {MEASURES[col][2]}", fontsize=8)
            ax.grid(True, alpha=0.3)
    seen: dict = {}
    for ax in axes.flat:
        seen.update({lab: h for h, lab in zip(*ax.get_legend_handles_labels(), strict=True)})
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), 5), frameon=False)
    fig.suptitle(f"ratio estimators against the closed form; bars: {CONFIDENCE:.0%} Student-t CI over seeds",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig


def outcome_figure(records: list[dict[str, Any]], metric: str = "bias"):
    """Each time-dependent estimator's pooled correction error against the final ``metric`` of the
    method trained with it, one point per seed; iw_dsm's mean (dotted) and tiw_dsm@exact's (dashed) as
    levels per ref_frac."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    out = outcome_frame(records, compared_suites(records), metric)
    tiw = out[(out.base == "tiw_dsm") & out.correction_error.notna()]
    if tiw.empty:
        return None
    # against the attainable target where every point has it (the ranking's target), else the truth
    x_col = "correction_error_att" if tiw.correction_error_att.notna().all() else "correction_error"
    groups = list(tiw.groupby(["suite", "dataset"], sort=True))
    fig, axes = plt.subplots(1, len(groups), figsize=(max(8.0, 5.4 * len(groups)), 5.0), squeeze=False)
    estimators = sorted(tiw.estimator.unique())
    colors = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(estimators)}
    fracs = sorted(out.ref_frac.unique())
    markers = dict(zip(fracs, "osD^v", strict=False))
    for ax, ((suite, ds), sub) in zip(axes.flat, groups, strict=True):
        for (e, rf), r in sub.groupby(["estimator", "ref_frac"]):
            ax.scatter(r[x_col], r[metric], color=colors[e], marker=markers.get(rf, "o"), s=28,
                       label=f"{e}, ref {rf:g}")
        for level, style in (("iw_dsm", ":"), ("tiw_dsm@exact", "--")):
            ref = out[(out.suite == suite) & (out.dataset == ds) & (out.method == level)]
            for rf, r in ref.groupby("ref_frac"):
                ax.axhline(r[metric].mean(), ls=style, color="0.3", lw=1)
                ax.text(0.01, r[metric].mean(), f"{level}, ref {rf:g}", fontsize=7, color="0.3", va="bottom",
                        transform=blended_transform_factory(ax.transAxes, ax.transData))
        ax.set_xscale("log")
        target = "attainable target (D_ref's proportions)" if x_col.endswith("_att") else "truth"
        ax.set_xlabel(f"correction error against the {target}, Σ‖σ²(∇ℓ̂ − ∇ℓ)‖² / Σ‖σ²∇ℓ‖² (all σ bands)",
                      fontsize=8)
        ax.set_ylabel(f"final {metric} of tiw_dsm trained with it")
        ax.set_title(f"{ds} (suite {suite})", fontsize=9)
        ax.grid(True, alpha=0.3)
    h, lab = axes[0, 0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=min(len(lab), 3), frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * math.ceil(len(lab) / 3), 1, 1))
    return fig


def save_figures(records: list[dict[str, Any]], plot: Path, dpi: int = 110) -> list[Path]:
    """Beside ``plot``: ``<stem>_ratio_error.png`` and ``<stem>_ratio_outcome.png``, where there is a study."""
    import matplotlib.pyplot as plt

    from tiwbench.records import atomic_write_bytes

    written = []
    for suffix, make in (("_ratio_error", error_figure), ("_ratio_outcome", outcome_figure)):
        fig = make(records)
        if fig is None:
            continue
        try:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
        finally:
            plt.close(fig)
        path = Path(plot).with_name(Path(plot).stem + suffix + ".png")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written
