"""Figures of aggregated results: each metric against ref_frac per method, with confidence-interval bars."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from tiwbench.intervals import CONFIDENCE, ReportError  # noqa: E402
from tiwbench.results import atomic_write_bytes  # noqa: E402


def figure(agg: pd.DataFrame):
    """One panel per (suite, dataset, metric), as the tables: log-x ref_frac; fully failed cells drawn as
    crosses on the x axis."""
    panels = list(agg.groupby(["suite", "dataset", "metric"], sort=True))
    if not panels:
        raise ReportError("nothing to plot: no aggregated cells")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    methods = sorted(agg.method.unique())
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = "osD^vP*Xh<>"
    suites = agg.suite.nunique()
    for ax, ((suite, ds, metric), sub) in zip(axes.flat, panels, strict=False):
        hib = bool(sub.higher_is_better.iloc[0])
        # a small multiplicative offset per method, so that overlapping error bars stay apart on log-x
        spread = 0.03
        for i, m in enumerate(methods):
            rows = sub[sub.method == m].sort_values("ref_frac")
            if rows.empty:
                continue
            shift = 1 + spread * (i - (len(methods) - 1) / 2)
            ok = rows[rows.n > 0]
            yerr = ok.ci_half.fillna(0.0).to_numpy()  # n=1: a bare point, no bar
            ax.errorbar(ok.ref_frac * shift, ok["mean"], yerr=yerr, color=colors[m], marker=markers[i % len(markers)],
                        ms=5, capsize=3, lw=1.4, label=m)
            bad = rows[rows.n == 0]
            if len(bad):
                trans = blended_transform_factory(ax.transData, ax.transAxes)
                ax.plot(bad.ref_frac * shift, [0.03] * len(bad), "x", color=colors[m], ms=9, mew=2.5,
                        transform=trans, clip_on=False)
        ax.set_xscale("log")
        fracs = sorted(sub.ref_frac.unique())
        ax.set_xlim(fracs[0] / 1.4, fracs[-1] * 1.4)  # room for the per-method offsets, even with one ref_frac
        ax.set_xticks(fracs)
        ax.set_xticklabels([f"{f:g}" for f in fracs])
        ax.minorticks_off()
        ax.set_xlabel("ref_frac  (|D_ref| / |D_bias|)")
        ax.set_ylabel(f"{metric} ({'higher' if hib else 'lower'} is better)")
        prefix = f"{suite}: " if suites > 1 else ""  # seeds of two suites are two experiments, never pooled
        ax.set_title(f"{prefix}{ds} · {metric} {'↑' if hib else '↓'}")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes.flat[1 : len(panels)]:
        h, lab = ax.get_legend_handles_labels()
        seen.update(zip(lab, h, strict=True))
    if agg.n.eq(0).any():
        seen["× on the axis: failed (all seeds)"] = plt.Line2D([], [], ls="", marker="x", color="0.3", ms=9, mew=2.5)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(len(seen), 6), frameon=False)
    fig.suptitle(f"mean over seeds, error bars: {CONFIDENCE:.0%} Student-t CI", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(seen) > 6), 1, 0.97))
    return fig


def figure_png(agg: pd.DataFrame, dpi: int = 110) -> bytes:
    fig = figure(agg)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    finally:
        plt.close(fig)


def save_plot(agg: pd.DataFrame, path: Path, dpi: int = 110) -> None:
    """Write the PNG atomically (temp file + rename), like the records."""
    if Path(path).suffix.lower() != ".png":
        raise ReportError(f"--plot {path}: the plot is a PNG; name the file *.png")
    atomic_write_bytes(path, figure_png(agg, dpi))
