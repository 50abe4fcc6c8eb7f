"""Figures of aggregated results: each metric against ref_frac (or a swept parameter) per method, with CI bars."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from tiwbench.records import atomic_write_bytes  # noqa: E402
from tiwbench.report.intervals import CONFIDENCE, ReportError, panel_key  # noqa: E402

DECADE = 10.0  # means spanning more than this factor in a panel are drawn on a log y-axis


def log_y(sub: pd.DataFrame) -> bool:
    """Whether a panel's y-axis is logarithmic: every finished mean (methods, ceilings and reference levels alike)
    positive and the largest over DECADE times the smallest, so that near-zero rows stay apart."""
    means = sub.loc[sub.n > 0, "mean"].dropna()
    return len(means) > 1 and bool((means > 0).all()) and float(means.max()) > DECADE * float(means.min())


def _y_range(sub: pd.DataFrame) -> tuple[float, float]:
    """A log panel's y-limits: every mean and every positive interval end inside, with a margin."""
    ok = sub[sub.n > 0]
    lows = pd.concat([ok["mean"], ok.ci_low[ok.ci_low > 0]]).dropna()
    highs = pd.concat([ok["mean"], ok.ci_high]).dropna()
    return float(lows.min()) / 1.6, float(highs.max()) * 1.6


def figure(agg: pd.DataFrame, methods: list[str] | None = None):
    """One panel per (suite, dataset, metric), as the tables, against the suite's x-axis (ref_frac on a log
    scale, or the swept dataset parameter); fully failed cells drawn as crosses on the x axis. A panel whose
    means span more than a decade has a log y-axis (see :func:`log_y`); an interval reaching 0 or below is
    cut at the axis's bottom and the panel says so."""
    panels = list(agg.assign(panel=panel_key(agg)).groupby(["suite", "dataset", "metric", "panel"], sort=True))
    if not panels:
        raise ReportError("nothing to plot: no aggregated cells")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    # ``methods``: the colour order, shared by the panels of one report so that a method keeps its colour
    order = list(methods or sorted(agg.method.unique()))
    order += sorted(set(agg.method) - set(order))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(order)}
    shapes = {m: "osD^vP*Xh<>"[i % 11] for i, m in enumerate(order)}
    methods = [m for m in order if m in set(agg.method)]
    suites = agg.suite.nunique()
    for ax, ((suite, ds, metric, panel), sub) in zip(axes.flat, panels, strict=False):
        hib = bool(sub.higher_is_better.iloc[0])
        xs = sorted(sub.x.unique())
        log_x = bool(xs[0] > 0)  # log spacing suits sizes; a swept parameter may start at 0
        width = (xs[-1] - xs[0]) or 1.0
        log = log_y(sub)
        bottom, top = _y_range(sub) if log else (math.nan, math.nan)
        cut = False
        # a small multiplicative offset per method, so that overlapping error bars stay apart on log-x
        spread = 0.03
        for i, m in enumerate(methods):
            rows = sub[sub.method == m].sort_values("x")
            if rows.empty:
                continue
            offset = spread * (i - (len(methods) - 1) / 2)
            place = (lambda x, o=offset: x * (1 + o)) if log_x else (lambda x, o=offset * width: x + o)
            ok = rows[rows.n > 0]
            yerr = ok.ci_half.fillna(0.0).to_numpy()  # n=1: a bare point, no bar
            if log:  # a log axis has no 0: a bar reaching it is cut at the bottom, and the panel says so
                below = (ok["mean"] - yerr).to_numpy() <= bottom
                cut = cut or bool(below.any())
                yerr = [[min(e, m - bottom) if b else e for e, m, b in zip(yerr, ok["mean"], below, strict=True)],
                        yerr]
            ax.errorbar(place(ok.x), ok["mean"], yerr=yerr, color=colors[m], marker=shapes[m],
                        ms=5, capsize=3, lw=1.4, label=m)
            bad = rows[rows.n == 0]
            if len(bad):
                trans = blended_transform_factory(ax.transData, ax.transAxes)
                ax.plot(place(bad.x), [0.03] * len(bad), "x", color=colors[m], ms=9, mew=2.5,
                        transform=trans, clip_on=False)
        if log_x:
            ax.set_xscale("log")
            ax.set_xlim(xs[0] / 1.4, xs[-1] * 1.4)  # room for the per-method offsets, even with one value
        else:
            ax.set_xlim(xs[0] - 0.15 * width, xs[-1] + 0.15 * width)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{f:g}" for f in xs])
        ax.minorticks_off()
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom, top)
            note = "log y: means span over a decade" + ("; bars cut at the bottom reach ≤ 0" if cut else "")
            ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.35")
        x_name = sub.x_name.iloc[0]
        ax.set_xlabel("ref_frac  (|D_ref| / |D_bias|)" if x_name == "ref_frac" else panel)
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
    # as many legend columns as the figure's width holds (long method@ratio names were cut off at its edges)
    width, _ = fig.get_size_inches()
    longest = max(len(k) for k in seen)
    ncol = max(1, min(len(seen), int(width / (0.6 + 0.085 * longest))))
    legend = fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(f"mean over seeds, error bars: {CONFIDENCE:.0%} Student-t CI", fontsize=10)
    # the axes go above the legend's measured height (its rows depend on the methods and the figure's size)
    box = legend.get_window_extent(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted())
    fig.tight_layout(rect=(0, box.y1 + 0.01, 1, 0.97))
    return fig


def fig_png(fig, dpi: int = 110) -> bytes | None:
    """A figure as PNG bytes, closed afterwards; None for no figure."""
    if fig is None:
        return None
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    finally:
        plt.close(fig)


def figure_png(agg: pd.DataFrame, dpi: int = 110) -> bytes:
    return fig_png(figure(agg), dpi)


def panel_pngs(agg: pd.DataFrame, dpi: int = 100) -> list[bytes]:
    """One single-panel figure per leaderboard table, in the tables' order (to sit beside each table)."""
    keyed = agg.assign(panel=panel_key(agg))
    methods = sorted(agg.method.unique())
    return [fig_png(figure(sub.drop(columns="panel"), methods), dpi)
            for _, sub in keyed.groupby(["suite", "dataset", "metric", "panel"], sort=True)]


def save_plot(agg: pd.DataFrame, path: Path, dpi: int = 110) -> None:
    """Write the PNG atomically (temp file + rename), like the records."""
    if Path(path).suffix.lower() != ".png":
        raise ReportError(f"--plot {path}: the plot is a PNG; name the file *.png")
    atomic_write_bytes(path, figure_png(agg, dpi))
