"""The verdict grid at the top of every report (tiwbench.report.verdicts) on planted records: a clear winner
with its paired margin, a tie, and a ceiling that leads every seed but never wins; the same cells in markdown,
HTML, json and csv, and the headline's sentences read from them."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from scipy import stats
from test_report import record

from tiwbench.report.leaderboard import aggregate, records_frame
from tiwbench.report.render import render
from tiwbench.report.verdicts import verdict_grid

# 0.05: a clearly below b on every seed; 0.25: a and b cross (a tie); the oracle (a ceiling) below both
A05, B05 = [0.10, 0.11, 0.12], [0.30, 0.33, 0.31]
A25, B25 = [0.20, 0.22, 0.19], [0.21, 0.20, 0.22]


def planted():
    recs = []
    for s in range(3):
        recs += [record("a", 0.05, s, A05[s]), record("b", 0.05, s, B05[s]),
                 record("a", 0.25, s, A25[s]), record("b", 0.25, s, B25[s]),
                 record("oracle", 0.05, s, 0.01), record("oracle", 0.25, s, 0.01)]
    return recs


def _grid(recs):
    df = records_frame(recs)
    return aggregate(df), df


def test_grid_names_the_winner_with_its_paired_margin_ties_as_ties_and_never_a_ceiling():
    agg, df = _grid(planted())
    (g,) = verdict_grid(agg, df)
    assert g["metrics"] == ["bias", "fd"] and sorted(g["rows"]) == [0.05, 0.25]
    win, tie = g["cells"][(0.05, "fd")], g["cells"][(0.25, "fd")]
    assert win["kind"] == "winner" and win["winner"] == "a" and win["runner_up"] == "b"
    d = [b - a for a, b in zip(A05, B05, strict=True)]  # a ahead (lower fd) by b − a per seed
    half = stats.t.ppf(0.975, 2) * stats.tstd(d) / 3**0.5
    assert win["margin"]["mean"] == pytest.approx(sum(d) / 3)
    assert win["margin"]["high"] - win["margin"]["low"] == pytest.approx(2 * half)
    assert tie["kind"] == "tie" and sorted(tie["tied"]) == ["a", "b"] and tie["winner"] is None
    assert "oracle" in win["references"] and "oracle" not in win["tied"] + tie["tied"]  # best, but a ceiling


def test_every_format_carries_the_same_verdicts():
    recs = planted()
    agg, df = _grid(recs)
    md = render(agg, "markdown", recs)
    assert md.startswith("## Verdicts")  # the first thing a reader sees
    margin = sum(b - a for a, b in zip(A05, B05, strict=True)) / 3
    assert f"| 0.05 (N_ref=50) | **a** by {margin:.3g} [" in md
    assert "| 0.25 (N_ref=250) | no winner: ≈ " in md
    assert md.index("## Verdicts") < md.index("## Headline")  # the long text below the grid
    html = render(agg, "html", recs)
    assert html.index('id="verdicts"') < html.index('id="headline"')
    assert 'class="verdict winner" data-winner="a"' in html and 'class="verdict tie" data-winner=""' in html
    anchor = html.split('class="verdict winner" data-winner="a"')[1].split('href="#')[1].split('"')[0]
    assert f'<h2 id="{anchor}">' in html  # each cell links to its table
    doc = json.loads(render(agg, "json", recs))
    fd = {v["x"]: v for v in doc["verdicts"] if v["metric"] == "fd"}
    assert fd[0.05]["winner"] == "a" and fd[0.05]["margin"] == pytest.approx(margin)
    assert fd[0.25]["verdict"] == "tie" and fd[0.25]["winner"] is None
    csv = pd.read_csv(io.StringIO(render(agg, "csv", recs)), keep_default_na=False)
    rows = csv[(csv.metric == "fd") & (csv.ref_frac == 0.05)]
    assert set(rows.verdict) == {fd[0.05]["text"]}  # every row of the column carries its verdict


def test_headline_sentences_are_the_grid_cells_in_words():
    from tiwbench.report.headline import headline

    agg, df = _grid(planted())
    sentences = dict(headline(agg, df))
    fd = next(v for k, v in sentences.items() if "fd" in k)
    assert fd[0].startswith("at 0.05 (N_ref=50), **a** wins") and "than the runner-up b" in fd[0]
    assert fd[1].startswith("at 0.25 (N_ref=250), no winner: ") and "for reference oracle" in fd[1]
