"""The report as a whole, in one format: the leaderboards, paired differences to one method, the HTML
page with its plot and samples, and the ratio study's tables and figures where a suite compares
estimators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.records import atomic_write_text
from tiwbench.report.intervals import ReportError
from tiwbench.report.leaderboard import (
    FORMATS,
    aggregate,
    load_runs,
    records_frame,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
)


def render(agg: pd.DataFrame, fmt: str = "markdown", records: list[dict[str, Any]] | None = None,
           vs: str | None = None) -> str:
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    from tiwbench.report.flags import add_flags, flag_summary

    if "cell_flags" not in agg:  # every format carries the flags the records raise (tiwbench.report.flags)
        agg = add_flags(agg, records or [])
    notice = flag_summary(agg)
    paired = ""
    if vs is not None:  # per-seed differences to one method
        from tiwbench.report.paired import paired_section

        paired = paired_section(records or [], vs, fmt)
    if fmt == "html":
        from tiwbench.report.curves import curves_html
        from tiwbench.report.html import gallery_html, to_html
        from tiwbench.report.plots import figure_png

        extra = paired + curves_html(records or []) + gallery_html(records or [])
        return to_html(agg, figure_png(agg) if len(agg) else None, extra, notice)
    head = f"**⚑ {notice}**\n\n" if notice and fmt == "markdown" else ""
    if paired:
        return head + to_markdown(agg) + "\n" + paired
    return head + {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}[fmt](agg)


def report(runs: Path, fmt: str = "markdown", output: Path | None = None, plot: Path | None = None,
           vs: str | None = None, win_map: Path | None = None, budget_check: str | None = None) -> str:
    """The report text in ``fmt``; also written to ``output`` and the plot to ``plot`` when given; with
    ``vs``, the paired differences of every method to that one."""
    records = load_runs(runs)
    agg = aggregate(records_frame(records))
    text = render(agg, fmt, records, vs)
    if fmt == "markdown":  # suites comparing ratio estimators (method@ratio) get the ratio study's tables
        from tiwbench.report.ratio_study import to_markdown as ratio_study_markdown

        text += ratio_study_markdown(records)
        from tiwbench.report.curves import to_markdown as curves_markdown

        text += curves_markdown(records)
        if win_map is not None:
            from tiwbench.report.win_map import to_markdown as win_markdown

            text += win_markdown(agg)
        if budget_check is not None:
            from tiwbench.report.budget_check import to_markdown as budget_markdown

            text += "\n" + budget_markdown(agg, budget_check)
    if output is not None:
        atomic_write_text(Path(output), text)
    if plot is not None:
        from tiwbench.report.curves import save_curves
        from tiwbench.report.plots import save_plot
        from tiwbench.report.ratio_study import save_figures

        save_plot(agg, Path(plot))
        save_figures(records, Path(plot))
        save_curves(records, Path(plot))
    if win_map is not None:
        from tiwbench.report.win_map import save_win_map

        save_win_map(agg, Path(win_map))
    return text
