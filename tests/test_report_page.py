"""The report a reader opens, on planted records: ties decided by paired tests (Holm over a column),
ceilings as reference rows that never win, the headline's sentences and margins, log axes where means
span decades, and an HTML page that carries every section of the markdown report."""

from __future__ import annotations

import html
import math
import re

import pytest
from scipy import stats
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.records import atomic_write_json, cell_dir
from tiwbench.report.headline import headline
from tiwbench.report.intervals import holm, paired_t
from tiwbench.report.leaderboard import aggregate, records_frame, to_markdown
from tiwbench.report.render import render


def _rec(method, seed, fd, *, frac=0.05, suite="u", dataset="gmm", sweep=None, extra=()):
    rec = {"suite": suite, "dataset": dataset, "method": method, "ref_frac": frac, "seed": seed, "status": "ok",
           "config": {"method": method, "seed": seed}, "ref_size": int(1000 * frac), "profile": "smoke",
           "metrics": [{"name": "fd", "value": fd, "higher_is_better": False}, *extra]}
    if sweep:
        rec["sweep"] = sweep
    return rec


def _cells(recs, metric="fd"):
    agg = aggregate(records_frame(recs))
    return {(r.method, r.x): r for _, r in agg[agg.metric == metric].iterrows()}, agg


# -- statistics -------------------------------------------------------------------------------------
def test_paired_t_matches_scipy():
    a, b = [0.31, 0.52, 0.18, 0.44], [0.20, 0.41, 0.15, 0.30]
    mean, half, p = paired_t([x - y for x, y in zip(a, b, strict=True)])
    ref = stats.ttest_rel(a, b)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    lo, hi = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem([x - y for x, y in zip(a, b, strict=True)]))
    assert half == pytest.approx((hi - lo) / 2, rel=1e-9)
    assert paired_t([0.5, 0.5, 0.5])[2] == 0.0 and paired_t([0.0, 0.0])[2] == 1.0
    assert math.isnan(paired_t([0.3])[2])


def test_holm_by_hand():
    # sorted 0.01 ≤ 0.05/3 rejects; 0.03 > 0.05/2 stops: unadjusted, all three would reject
    assert holm([0.01, 0.04, 0.03]) == [True, False, False]
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]  # 0.001 ≤ .0167, 0.02 ≤ .025, 0.04 ≤ .05
    assert holm([math.nan, 0.001]) == [False, True]


# -- ties ---------------------------------------------------------------------------------------------
LEADER = [0.0040, 0.0038, 0.0042]
FIFTY = [0.10, 0.20, 0.30]  # 50× the leader on average; seed noise so large its own interval covers the leader


def test_fifty_times_worse_over_three_paired_seeds_is_not_tied():
    recs = [_rec("lead", s, v) for s, v in enumerate(LEADER)] + [_rec("worse", s, v) for s, v in enumerate(FIFTY)]
    c, _ = _cells(recs)
    worse = c[("worse", 0.05)]
    assert worse.ci_low < sum(LEADER) / 3  # the hard case: unpaired intervals overlap
    assert c[("lead", 0.05)].mark == "best" and worse.mark == "" and worse.test == "paired"


def test_the_same_cells_without_shared_seeds_fall_back_to_unpaired_intervals():
    recs = [_rec("lead", s, v) for s, v in enumerate(LEADER)] + [_rec("worse", s + 3, v) for s, v in enumerate(FIFTY)]
    c, agg = _cells(recs)
    assert c[("lead", 0.05)].mark == "tie" and c[("worse", 0.05)].mark == "tie"
    assert c[("worse", 0.05)].test == "unpaired"
    assert "Compared without pairing (no seeds shared with the leader): worse at 0.05" in to_markdown(agg)


def test_methods_differing_by_noise_are_tied():
    a, b = [1.00, 1.10, 0.90], [1.06, 0.93, 0.99]
    c, _ = _cells([_rec("a", s, v) for s, v in enumerate(a)] + [_rec("b", s, v) for s, v in enumerate(b)])
    assert c[("a", 0.05)].mark == "tie" and c[("b", 0.05)].mark == "tie"
    assert {c[("a", 0.05)].test, c[("b", 0.05)].test} == {"lead", "paired"}


def test_holm_corrects_over_the_comparisons_of_a_column():
    # per-seed log ratios [1, 1.309, 0.691]: paired p ≈ 0.03 against the leader
    d = [1.0, 1.309, 0.691]
    p = paired_t(d)[2]
    assert 0.025 < p < 0.05
    one = [_rec("lead", s, v) for s, v in enumerate(LEADER)]
    alone = one + [_rec("x0", s, v * math.exp(k)) for s, (v, k) in enumerate(zip(LEADER, d, strict=True))]
    assert _cells(alone)[0][("lead", 0.05)].mark == "best"  # one comparison: p < 0.05 separates
    three = one + [_rec(f"x{i}", s, v * math.exp(k) * (1 + 0.001 * i))
                   for i in range(3) for s, (v, k) in enumerate(zip(LEADER, d, strict=True))]
    c, _ = _cells(three)
    assert c[("lead", 0.05)].mark == "tie" and all(c[(f"x{i}", 0.05)].mark == "tie" for i in range(3))


# -- ceilings ---------------------------------------------------------------------------------------
def _with_ceilings(sweep=None, suite="u"):
    recs = []
    for s in range(3):
        j = 0.01 * (s - 1)
        recs += [_rec("tiw_dsm", s, 0.20 + j, sweep=sweep, suite=suite),
                 _rec("iw_dsm", s, 0.40 + j, sweep=sweep, suite=suite),
                 _rec("dsm_ref", s, 0.50 + 2 * j, sweep=sweep, suite=suite),
                 _rec("oracle", s, 0.01 + j / 10, sweep=sweep, suite=suite),
                 _rec("tiw_dsm@exact_empirical", s, 0.05 + j / 10, sweep=sweep, suite=suite)]
    return recs


def test_ceilings_are_reference_rows_never_marked():
    c, agg = _cells(_with_ceilings())
    assert c[("tiw_dsm", 0.05)].mark == "best"  # the best runnable method, though the ceilings are far lower
    assert c[("oracle", 0.05)].mark == "" and bool(c[("oracle", 0.05)].ceiling)
    assert c[("tiw_dsm@exact_empirical", 0.05)].mark == "" and bool(c[("tiw_dsm@exact_empirical", 0.05)].ceiling)
    rows = [line.split("|")[1].strip() for line in to_markdown(agg).splitlines() if line.startswith("| ")]
    assert rows[-2:] == ["oracle (ceiling)", "tiw_dsm@exact_empirical (ceiling)"]  # references after the ranked


class _FittedCeiling:
    """A ratio estimator registered with the ceiling flag, as a new ceiling would be."""


def test_a_newly_registered_ceiling_is_covered_by_its_flag(monkeypatch):
    from tiwbench.ratios.estimators import Exact
    from tiwbench.registry import RATIOS

    monkeypatch.setattr(RATIOS, "_entries", dict(RATIOS._entries))
    monkeypatch.setattr(RATIOS, "_origin", dict(RATIOS._origin))
    recs = [_rec("tiw_dsm", s, 0.2 + 0.01 * s) for s in range(3)] + [_rec("tiw_dsm@fitted_x", s, 0.1 + 0.01 * s)
                                                                      for s in range(3)]
    RATIOS.register("fitted_x", type("FittedX", (Exact,), {"name": "fitted_x", "ceiling": False}))
    assert _cells(recs)[0][("tiw_dsm@fitted_x", 0.05)].mark == "best"  # unflagged, it competes and wins
    RATIOS._entries["fitted_x"] = type("FittedX", (Exact,), {"name": "fitted_x", "ceiling": True})
    c, _ = _cells(recs)
    assert c[("tiw_dsm@fitted_x", 0.05)].mark == "" and c[("tiw_dsm", 0.05)].mark == ""  # one ranked: no mark


def test_a_plain_method_trained_with_a_ceiling_estimator_is_a_ceiling():
    recs = [_rec("tiw_dsm", s, 0.1) | {"config": {"ratio": {"provider": "exact"}}} for s in range(2)]
    recs += [_rec("dsm_ref", s, 0.1) | {"config": {"ratio": {"provider": "exact"}}} for s in range(2)]
    c, _ = _cells(recs)
    assert bool(c[("tiw_dsm", 0.05)].ceiling) and not bool(c[("dsm_ref", 0.05)].ceiling)  # dsm_ref uses no ratio


def test_win_map_on_regime_records_names_no_ceiling(tmp_path):
    recs = _with_ceilings({"dim": 4}, "regime") + _with_ceilings({"dim": 16}, "regime")
    for r in recs:
        atomic_write_json(cell_dir(tmp_path / "runs", r["suite"], r["dataset"], r["method"], r["ref_frac"], r["seed"],
                                   r["sweep"]) / "record.json", r)
    res = CliRunner().invoke(app, ["report", "--runs", str(tmp_path / "runs"), "--win-map", str(tmp_path / "w.png")])
    assert res.exit_code == 0, res.output
    table = res.stdout.split("### Who wins where", 1)[1]
    winners = re.findall(r"\*\*([^*]+)\*\*", table) + re.findall(r"≈ ([^|]+)", table)
    assert winners and all(w.strip() == "tiw_dsm" for w in winners)
    assert "oracle" not in table.split("| dim |", 1)[1] and "exact" not in table.split("| dim |", 1)[1]


# -- headline ---------------------------------------------------------------------------------------
def test_headline_winner_margins_ties_and_flags():
    recs = _with_ceilings()
    recs += [_rec(m, s, v, frac=0.25) for m, vals in {"tiw_dsm": [0.2, 0.3, 0.25], "iw_dsm": [0.28, 0.22, 0.26],
                                                       "oracle": [0.01, 0.01, 0.01]}.items()
             for s, v in enumerate(vals)]
    df = records_frame(recs)
    agg = aggregate(df)
    (title, sentences), = headline(agg, df)
    assert title == "gmm · fd ↓ (suite u)"
    win, tie = sentences
    # the margins, paired by seed, from the planted values: iw_dsm − tiw_dsm = 0.2 on every seed
    assert "**tiw_dsm** wins" in win and "lower by 0.2 (paired 95% CI [0.2, 0.2], ahead on 3 of 3 seeds) than " \
                                          "the runner-up iw_dsm" in win
    d = [0.50 + 2 * j - (0.20 + j) for j in (-0.01, 0.0, 0.01)]
    mean, half, _ = paired_t(d)
    assert f"lower by {mean:.3g} (paired 95% CI [{mean - half:.3g}, {mean + half:.3g}]" in win and "than dsm_ref" in win
    assert "for reference oracle" in win and "wins" not in win.split("for reference")[1]
    assert tie.startswith("at 0.25 (N_ref=250), no winner: tiw_dsm (0.25) ≈ iw_dsm (0.253)")
    assert "oracle" not in tie.split("for reference")[0]
    agg["flags"] = [["unconverged"] if m == "iw_dsm" else [] for m in agg.method]
    assert "[flags: iw_dsm: unconverged]" in headline(agg, df)[0][1][0]


def test_verdict_grid_then_headline_head_both_formats():
    recs = _with_ceilings()
    agg = aggregate(records_frame(recs))
    md = render(agg, "markdown", recs)
    assert md.startswith("## Verdicts") and md.index("## Verdicts") < md.index("## Headline") < md.index("### gmm · fd")
    page = render(agg, "html", recs)
    assert page.index('id="verdicts"') < page.index('id="headline"') < page.index('">gmm · fd')


# -- scales -----------------------------------------------------------------------------------------
def test_a_panel_spanning_decades_has_a_log_axis():
    import matplotlib.pyplot as plt

    from tiwbench.report.plots import figure

    floor = {"name": "fd_ref_level", "value": 0.003, "higher_is_better": False}
    wide = [_rec(m, s, v + 0.001 * s, extra=[floor]) for m, v in {"a": 0.2, "b": 0.1}.items() for s in range(3)]
    narrow = [_rec(m, s, v + 0.001 * s) for m, v in {"a": 0.2, "b": 0.1}.items() for s in range(3)]
    for recs, scale in ((wide, "log"), (narrow, "linear")):
        fig = figure(aggregate(records_frame(recs)))
        ax = fig.axes[0]
        assert ax.get_yscale() == scale
        if scale == "log":  # every mean inside the range: the floor at 0.003 is not hidden at the bottom
            lo, hi = ax.get_ylim()
            assert lo < 0.003 and hi > 0.2
        plt.close(fig)


# -- one report, every format -------------------------------------------------------------------------
def _text(fragment: str) -> str:
    """Visible text without markup or whitespace, for comparing a markdown line with its HTML."""
    return re.sub(r"\s+", "", html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("**", ""))


def _all_sections():
    from test_budget_check import _rec as budget_rec
    from test_ratio_study import _records as ratio_records
    from test_selection import _sel_record
    from test_win_map import _records as regime_records

    recs = ratio_records() + regime_records() + _with_ceilings()
    recs += [_sel_record("a", 0, {10: 2.0, 20: 1.0}, 20), _sel_record("b", 0, {10: 3.0, 20: 2.0}, 20)]
    recs += [budget_rec(suite, m, s, v + 0.01 * s) for suite in ("b", "b_x2") for m, v in (("a", 1.0), ("b", 2.0))
             for s in range(3)]
    return recs


def check_parity(md: str, page: str) -> None:
    """Every heading, table row, note and headline item of the markdown is in the HTML page."""
    headings = {_text(h) for h in re.findall(r"<h[1-4][^>]*>(.*?)</h[1-4]>", page, re.S)}
    rows = {"|".join(_text(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S))
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)}
    flat = _text(page)
    for line in md.splitlines():
        s = line.strip()
        if s.startswith("#"):
            assert _text(s.lstrip("#")) in headings, f"heading missing from the html: {s}"
        elif s.startswith("|"):
            if set(s) <= set("|-: "):
                continue  # the separator row
            assert "|".join(_text(c) for c in s.strip("|").split("|")) in rows, f"row missing from the html: {s}"
        elif s:
            assert _text(s.strip("_").removeprefix("- ")) in flat, f"text missing from the html: {s}"


def test_every_markdown_section_has_its_html_counterpart():
    recs = _all_sections()
    df = records_frame(recs)
    agg = aggregate(df)
    kw = {"vs": "iw_dsm", "win_map": True, "budget_check": "b", "df": df}
    md, page = render(agg, "markdown", recs, **kw), render(agg, "html", recs, **kw)
    for title in ("## Headline", "### Paired differences to iw_dsm", "## Ratio study", "### Checkpoint selection",
                  "### Who wins where", "### Budget-doubling check"):
        assert title in md  # every kind of section is there to compare
    check_parity(md, page)
    # the check fails on a page that lost a section
    cut = page.replace(page[page.index('<section id="budget">'):page.index("</section>", page.index(
        '<section id="budget">'))], "")
    with pytest.raises(AssertionError, match="Budget-doubling"):
        check_parity(md, cut)
