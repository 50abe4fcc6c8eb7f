"""Which method wins where: a map over the swept parameter (regime's dim) × ref_frac per dataset and metric.

A cell names its winner only where the leaderboard marks one best (every other method separated from it:
paired tests where the cells share seeds, see :func:`tiwbench.report.leaderboard.column_verdicts`);
otherwise it lists the tied methods, drawn grey. Ceilings (the oracle, exact ratios: whatever a method's or
ratio estimator's registry entry declares a ceiling) are no competitors and never named, nor are the reference levels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tiwbench.records import atomic_write_bytes  # noqa: E402
from tiwbench.report.intervals import ReportError  # noqa: E402

REF_LEVELS = ("bias_ref_level", "bias_ref", "fd_ref_level")


def winners(agg: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (suite, dataset, x, ref_frac): ``kind`` "best" (one winner), "tie" (the tied methods,
    best mean first) or "none" (nothing ranked), from the leaderboard's marks (ceilings are never marked)."""
    sub = agg[agg.metric == metric]
    rows = []
    for (suite, ds, x_name, x, frac), col in sub.groupby(["suite", "dataset", "x_name", "x", "ref_frac"], sort=True):
        leaders = col[col.mark.isin(["best", "tie"]) & ~col.ceiling.astype(bool)]
        if len(leaders):
            leaders = leaders.sort_values("mean", ascending=not bool(leaders.higher_is_better.iloc[0]))
        kind = "none" if leaders.empty else ("best" if len(leaders) == 1 else "tie")
        rows.append({"suite": suite, "dataset": ds, "metric": metric, "x_name": x_name, "x": x, "ref_frac": frac,
                     "kind": kind, "methods": list(leaders.method)})
    return pd.DataFrame(rows, columns=["suite", "dataset", "metric", "x_name", "x", "ref_frac", "kind", "methods"])


def _label(r: Any) -> str:
    if r.kind == "none":
        return "–"
    if r.kind == "best":
        return r.methods[0]
    names = r.methods[:3] + ([f"+{len(r.methods) - 3}"] if len(r.methods) > 3 else [])
    return "≈ " + "\n≈ ".join(names)


def figure(agg: pd.DataFrame, metrics: list[str] | None = None):
    metrics = metrics or [m for m in sorted(agg.metric.unique()) if m not in REF_LEVELS]
    panels = []
    for metric in metrics:
        table = winners(agg, metric)
        for (suite, ds), t in table.groupby(["suite", "dataset"], sort=True):
            panels.append((suite, ds, metric, t))
    if not panels:
        raise ReportError("no cells to map: the win map needs finished records")
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 3.6 * nrows), squeeze=False)
    methods = sorted({m for _, _, _, t in panels for ms in t.methods for m in ms})
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    for ax, (suite, ds, metric, t) in zip(axes.flat, panels, strict=False):
        xs, fracs = sorted(t.x.unique()), sorted(t.ref_frac.unique())
        for _, r in t.iterrows():
            i, j = xs.index(r.x), fracs.index(r.ref_frac)
            face = colors[r.methods[0]] if r.kind == "best" else (0.88, 0.88, 0.88)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face, edgecolor="white", lw=2))
            ax.text(j, i, _label(r), ha="center", va="center", fontsize=7, wrap=True)
        ax.set_xlim(-0.5, len(fracs) - 0.5)
        ax.set_ylim(-0.5, len(xs) - 0.5)
        ax.set_xticks(range(len(fracs)), [f"{f:g}" for f in fracs])
        ax.set_yticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_xlabel("ref_frac")
        ax.set_ylabel(str(t.x_name.iloc[0]))
        ax.set_title(f"{ds}: {metric} ({suite})", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("winner where separated from every other method (paired tests, Holm); grey: ≈ tied; "
                 "ceilings (oracle, exact ratios) never compete", fontsize=9)
    fig.tight_layout()
    return fig


def to_markdown(agg: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """The map as tables: per (suite, dataset, metric), rows the swept value, columns ref_frac; a cell names
    its winner in bold, or the tied methods (best mean first) after ≈."""
    metrics = metrics or [m for m in sorted(agg.metric.unique()) if m not in REF_LEVELS]
    parts = ["", "### Who wins where",
             "_A winner only where the leaderboard marks it best (separated from every other method: paired "
             "tests where the cells share seeds, Holm-corrected; else non-overlapping intervals); ≈: the tied "
             "leaders, best mean first; ceilings (the oracle, exact ratios) are references and never compete._"]
    for metric in metrics:
        for (suite, ds), t in winners(agg, metric).groupby(["suite", "dataset"], sort=True):
            xs, fracs = sorted(t.x.unique()), sorted(t.ref_frac.unique())
            parts += ["", f"{ds} · {metric} ({suite})", "",
                      f"| {t.x_name.iloc[0]} | " + " | ".join(f"{f:g}" for f in fracs) + " |",
                      "|---" * (len(fracs) + 1) + "|"]
            cells = {(r.x, r.ref_frac): r for r in t.itertuples()}
            for x in xs:
                row = []
                for f in fracs:
                    r = cells.get((x, f))
                    if r is None or r.kind == "none":
                        row.append("–")
                    elif r.kind == "best":
                        row.append(f"**{r.methods[0]}**")
                    else:
                        row.append("≈ " + ", ".join(r.methods))
                parts.append(f"| {x:g} | " + " | ".join(row) + " |")
    return "\n".join(parts) + "\n"


def save_win_map(agg: pd.DataFrame, path: Path, metrics: list[str] | None = None) -> None:
    import io

    fig = figure(agg, metrics)
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
