"""The report as a whole, one content in every format: the headline, the leaderboards, paired differences
to one method, the ratio study's tables where a suite compares estimators, checkpoint selection, the win
map and the budget check where asked. The markdown is the text of each section; the HTML page carries the
same sections (each leaderboard beside its figure, the other figures beside their sections) and the samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.records import atomic_write_text
from tiwbench.report.intervals import ReportError
from tiwbench.report.labels import mark_label_trunks
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

OUTCOME = "\n### bias minus iw_dsm"  # where the ratio study's outcome table begins


def _sections(agg: pd.DataFrame, records: list[dict[str, Any]], vs: str | None, win_map: bool,
              budget_check: str | None, gap: bool = False, gap_ceiling: str | None = None,
              compare_suites: str | None = None, pairs: str | None = None,
              borrow: list[str] | None = None) -> list[tuple[str, str, list[tuple[str, bytes]]]]:
    """The sections after the leaderboards: (name, markdown, figures as (alt, PNG)), in report order;
    figures are made only for the HTML page (``_figures``)."""
    from tiwbench.report.curves import to_markdown as curves_markdown
    from tiwbench.report.labels import LABEL_NOTE, any_marked
    from tiwbench.report.ratio_study import to_markdown as ratio_markdown

    out = [("labels", "\n" + LABEL_NOTE + "\n")] if any_marked(records) else []
    if vs is not None:  # per-seed differences to one method
        from tiwbench.report.paired import paired_section

        out.append(("paired", paired_section(records, vs, "markdown")))
    if pairs is not None:  # chosen pairs A − B, reference-only rows borrowed where asked
        from tiwbench.report.paired import pairs_section

        out.append(("pairs", pairs_section(records, pairs, borrow)))
    elif borrow:
        raise ReportError("--borrow fills the rows of --pairs; give --pairs too")
    from tiwbench.report.paired import collapse_note

    out.append(("collapse", collapse_note(records)))
    out.append(("ratio_study", ratio_markdown(records)))
    out.append(("curves", curves_markdown(records)))
    if win_map:
        from tiwbench.report.win_map import to_markdown as win_markdown

        out.append(("win_map", win_markdown(agg)))
    if budget_check is not None:
        from tiwbench.report.budget_check import to_markdown as budget_markdown

        out.append(("budget", "\n" + budget_markdown(agg, budget_check)))
    if compare_suites is not None:  # the same cells under another rule or budget, paired by seed
        from tiwbench.report.suite_compare import parse_pair
        from tiwbench.report.suite_compare import to_markdown as compare_markdown

        out.append(("compare", "\n" + compare_markdown(records_frame(records), agg, *parse_pair(compare_suites))))
    if gap:  # each learned estimator against dsm_ref and the fair ceiling
        from tiwbench.report.gap import to_markdown as gap_markdown

        out.append(("gap", "\n" + gap_markdown(records, gap_ceiling)))
    return [s for s in out if s[1].strip()]


def _figures(name: str, agg: pd.DataFrame, records: list[dict[str, Any]]) -> list[tuple[str, bytes | None]]:
    """The figures that illustrate a section, for the HTML page."""
    if name == "ratio_study":
        from tiwbench.report.plots import fig_png
        from tiwbench.report.ratio_study import error_figure, outcome_figure

        return [("ratio estimators' errors against σ", fig_png(error_figure(records))),
                ("final metric against the correction error", fig_png(outcome_figure(records)))]
    if name == "curves":
        from tiwbench.report.curves import curves_png

        return [("validation curves", curves_png(records))]
    if name == "win_map":
        from tiwbench.report.plots import fig_png
        from tiwbench.report.win_map import figure

        return [("win map", fig_png(figure(agg)))]
    return []


def _html(agg: pd.DataFrame, df: pd.DataFrame, records: list[dict[str, Any]], sections, notice: str = "") -> str:
    from tiwbench.report.headline import to_html as headline_html
    from tiwbench.report.html import gallery_html, markdown_html, png_img, to_html
    from tiwbench.report.plots import panel_pngs

    extra = []
    for name, text in sections:
        figs = [f"<figure>{png_img(png, alt)}</figure>" if png else "" for alt, png in _figures(name, agg, records)]
        # the ratio study's error figure beside its error tables, its outcome figure beside the outcome table
        if name == "ratio_study" and OUTCOME in text and len(figs) == 2:
            head, tail = text.split(OUTCOME, 1)
            blocks = [head, OUTCOME + tail]
        else:
            blocks, figs = [text], ["".join(figs)]
        pairs = "".join(f'<div class="pair"><div>{markdown_html(b)}</div>{f}</div>'
                        for b, f in zip(blocks, figs, strict=True))
        extra.append(f'<section id="{name}">{pairs}</section>')
    extra.append(gallery_html(records))
    figures = dict(enumerate(panel_pngs(agg))) if len(agg) else {}
    from tiwbench.report.verdicts import to_html as verdicts_html

    return to_html(agg, figures, "\n".join(extra), top=verdicts_html(agg, df) + headline_html(agg, df),
                   notice=notice)


def render(agg: pd.DataFrame, fmt: str = "markdown", records: list[dict[str, Any]] | None = None,
           vs: str | None = None, win_map: bool = False, budget_check: str | None = None,
           df: pd.DataFrame | None = None, gap: bool = False, gap_ceiling: str | None = None,
           compare_suites: str | None = None, pairs: str | None = None, borrow: list[str] | None = None) -> str:
    """The report in ``fmt``; ``df``: the per-seed rows ``agg`` came from (default: from ``records``)."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    from tiwbench.report.flags import add_flags, flag_summary

    records = mark_label_trunks(records or [])
    df = records_frame(records) if df is None else df
    if "cell_flags" not in agg:  # every format carries the flags the records raise (tiwbench.report.flags)
        agg = add_flags(agg, records, df)
    notice = flag_summary(agg)
    if fmt not in ("markdown", "html"):
        if vs is not None or pairs is not None:
            raise ReportError(f"--vs and --pairs work with --format markdown or html, not {fmt}")
        return _with_verdicts(fmt, agg, df)
    sections = _sections(agg, records, vs, win_map, budget_check, gap, gap_ceiling, compare_suites, pairs, borrow)
    if fmt == "html":
        return _html(agg, df, records, sections, notice)
    from tiwbench.report.headline import to_markdown as headline_markdown
    from tiwbench.report.verdicts import to_markdown as verdicts_markdown

    head = f"**⚑ {notice}**\n\n" if notice else ""
    return (verdicts_markdown(agg, df) + head + headline_markdown(agg, df) + to_markdown(agg)
            + "".join("\n" + text for _, text in sections))


def _with_verdicts(fmt: str, agg: pd.DataFrame, df: pd.DataFrame) -> str:
    """csv, json and LaTeX: the leaderboard's cells; json also the verdict grid's cells, csv each row's column
    verdict (LaTeX keeps to the tables)."""
    import json

    from tiwbench.report.verdicts import tidy as verdict_cells

    if fmt == "latex":
        return to_latex(agg)
    verdicts = verdict_cells(agg, df)
    if fmt == "json":
        doc = json.loads(to_json(agg))
        doc["verdicts"] = verdicts
        return json.dumps(doc, indent=2) + "\n"
    from tiwbench.report.intervals import panel_key

    by_column = {(v["suite"], v["dataset"], v["panel"], v["metric"], v["x"]): v for v in verdicts}
    keys = list(zip(agg.suite, agg.dataset, panel_key(agg) if len(agg) else [], agg.metric, agg.x, strict=True))
    agg = agg.assign(verdict=[by_column.get(k, {}).get("text", "") for k in keys])
    return to_csv(agg)


def report(runs: Path, fmt: str = "markdown", output: Path | None = None, plot: Path | None = None,
           vs: str | None = None, win_map: Path | None = None, budget_check: str | None = None, gap: bool = False,
           gap_ceiling: str | None = None, compare_suites: str | None = None, pairs: str | None = None,
           borrow: list[str] | None = None) -> str:
    """The report text in ``fmt``; also written to ``output`` and the plot to ``plot`` when given; with
    ``vs``, the paired differences of every method to that one; with ``gap``, the gap report (each method
    against dsm_ref and the fair ceiling, ``gap_ceiling`` naming another ceiling method)."""
    records = mark_label_trunks(load_runs(runs))
    df = records_frame(records)
    agg = aggregate(df)
    text = render(agg, fmt, records, vs, win_map=win_map is not None, budget_check=budget_check, df=df, gap=gap,
                  gap_ceiling=gap_ceiling, compare_suites=compare_suites, pairs=pairs, borrow=borrow)
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
