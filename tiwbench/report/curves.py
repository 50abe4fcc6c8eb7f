"""Validation curves of checkpoint selection (``train.selection`` in the records): the selection metric of
each EMA snapshot against the training step, mean over seeds, with the chosen steps marked. They show
where a method peaks and whether the budget reaches the peak (a curve still falling at its last step is
an unconverged budget)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.records import atomic_write_bytes


def curves_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (record, snapshot step): suite, dataset, swept point, ref_frac, method, seed, step, value,
    chosen (the snapshot the record reports)."""
    rows = []
    for r in records:
        sel = (r.get("train") or {}).get("selection")
        if r.get("status") != "ok" or not sel or not sel.get("values"):  # "none": the last step, no curve
            continue
        point = " ".join(f"{k}={v}" for k, v in sorted((r.get("sweep") or {}).items()))
        for step, value in sel["values"].items():
            rows.append({"suite": r["suite"], "dataset": r["dataset"], "point": point, "ref_frac": r["ref_frac"],
                         "method": r["method"], "seed": r["seed"], "by": sel["by"], "step": int(step),
                         "rule": f"{sel.get('source', 'truth')}: {sel['by']}",
                         "value": value, "chosen": int(step) == int(sel["step"])})
    return pd.DataFrame(rows)


def peak_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (suite, dataset, point, ref_frac, method): the seeds, the mean chosen step, and how many seeds
    chose the last snapshot (a peak at or beyond the budget's end)."""
    if frame.empty:
        return frame
    keys = ["suite", "dataset", "point", "ref_frac", "method", "rule"]
    last = frame.groupby([*keys, "seed"]).step.transform("max")
    chosen = frame[frame.chosen].assign(at_end=frame.step[frame.chosen] == last[frame.chosen])
    return chosen.groupby(keys).agg(seeds=("seed", "nunique"), mean_step=("step", "mean"),
                                    at_end=("at_end", "sum")).reset_index()


def curves_figure(records: list[dict[str, Any]]):
    """One panel per (suite, dataset, swept point, ref_frac); None without selection records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = curves_frame(records)
    if frame.empty:
        return None
    panels = list(frame.groupby(["suite", "dataset", "point", "ref_frac"], sort=True))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    methods = sorted(frame.method.unique())
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, ((suite, dataset, point, ref_frac), part) in zip(axes.flat, panels, strict=False):
        for method, m in part.groupby("method"):
            mean = m.groupby("step").value.mean()
            ax.plot(mean.index, mean.values, marker=".", color=colours[method], label=method)
            picked = m[m.chosen]
            ax.scatter(picked.step, picked.value, s=28, facecolors="none", edgecolors=[colours[method]],
                       zorder=3)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {part.by.iloc[0]} (mean over seeds)")
        ax.set_title(f"{suite} · {dataset}{' ' + point if point else ''} · ref_frac {ref_frac:g}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
    fig.text(0.01, 0.01, "circles: each seed's chosen snapshot", fontsize=7)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 5), 1, 1))
    return fig


def curves_png(records: list[dict[str, Any]], dpi: int = 110) -> bytes | None:
    """The figure as PNG bytes; None without selection records."""
    import matplotlib.pyplot as plt

    fig = curves_figure(records)
    if fig is None:
        return None
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def curves_html(records: list[dict[str, Any]]) -> str:
    """The figure as an embedded image for the HTML report ("" without selection records)."""
    import base64

    png = curves_png(records)
    if png is None:
        return ""
    b64 = base64.b64encode(png).decode("ascii")
    return ("<h2>Checkpoint selection: validation curves</h2><p><small>Mean over seeds of the selection metric "
            "of each EMA snapshot; circles mark each seed's chosen snapshot. A curve still falling at its last "
            "step has not reached its peak.</small></p>"
            f'<img alt="validation curves" src="data:image/png;base64,{b64}">')


def save_curves(records: list[dict[str, Any]], plot: Path, dpi: int = 110) -> Path | None:
    """Beside ``plot``: ``<stem>_curves.png``, where records carry checkpoint selection."""
    png = curves_png(records, dpi)
    if png is None:
        return None
    path = Path(plot).with_name(Path(plot).stem + "_curves.png")
    atomic_write_bytes(path, png)
    return path


def to_markdown(records: list[dict[str, Any]]) -> str:
    """The chosen checkpoints as a table ("" without selection records): a method whose seeds keep choosing
    the last snapshot has not reached its peak within the budget."""
    summary = peak_summary(curves_frame(records))
    if summary.empty:
        return ""
    lines = ["", "### Checkpoint selection (train.select_every)", "",
             "| suite | dataset | point | ref_frac | method | rule: score | seeds | mean chosen step | seeds at the "
             "last snapshot |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.suite} | {r.dataset} | {r.point or '–'} | {r.ref_frac:g} | {r.method} | {r.rule} | "
                     f"{r.seeds} | {r.mean_step:.0f} | {r.at_end} |")
    return "\n".join(lines) + "\n"
