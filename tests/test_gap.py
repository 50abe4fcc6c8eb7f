"""The gap report against a hand computation on planted records."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_report import record, write
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.report.gap import gap_table, share_interval
from tiwbench.report.leaderboard import records_frame

REF = [1.0, 1.2, 0.9, 1.1]  # dsm_ref per seed
CEIL = [0.5, 0.6, 0.5, 0.6]  # the ceiling
LEARNED = [0.8, 1.0, 0.7, 0.8]  # tiw_dsm@trunk
FITTED = [0.4, 0.5, 0.4, 0.5]  # the tilt's fitted ceiling


def _records(dataset="gmm"):
    recs = []
    for m, vals in (("dsm_ref", REF), ("tiw_dsm@exact_empirical", CEIL), ("tiw_dsm@trunk", LEARNED),
                    ("tiw_dsm@fitted_family", FITTED)):
        recs += [record(m, 0.01, s, v, dataset=dataset) for s, v in enumerate(vals)]
    return recs


def _row(table, method, metric="fd"):
    return table[(table.method == method) & (table.metric == metric)].iloc[0]


def test_gap_rows_match_hand_computation():
    t = gap_table(records_frame(_records()))
    r = _row(t, "tiw_dsm@trunk")
    assert r.ceiling == "tiw_dsm@exact_empirical" and r.n == 4
    d_ref = [m - b for m, b in zip(LEARNED, REF)]  # (−0.2, −0.2, −0.2, −0.3)
    d_ceil = [m - c for m, c in zip(LEARNED, CEIL)]  # (0.3, 0.4, 0.2, 0.2)
    assert r.vs_ref == pytest.approx(-0.225) and r.vs_ceiling == pytest.approx(0.275)
    sd = math.sqrt(sum((d - 0.275) ** 2 for d in d_ceil) / 3)
    assert r.vs_ceiling_half == pytest.approx(3.182446305284263 * sd / 2, rel=1e-9)  # t_{0.975, 3}
    assert sum(d_ref) / 4 == pytest.approx(-0.225)
    # share = mean(ref − m) / mean(ref − ceil) = 0.225 / 0.5
    assert r.share == pytest.approx(0.45)
    assert r.share_lo <= 0.45 <= r.share_hi and r.share_hi - r.share_lo > 0
    # the fitted ceiling is one more method under label bias
    assert _row(t, "tiw_dsm@fitted_family").share == pytest.approx(0.6 / 0.5)  # beyond the ceiling: above 1


def test_the_tilt_uses_the_fitted_ceiling_and_a_named_one_overrides():
    t = gap_table(records_frame(_records("gmm_tilt")))
    r = _row(t, "tiw_dsm@trunk")
    assert r.ceiling == "tiw_dsm@fitted_family"
    assert r.share == pytest.approx(0.225 / (1.05 - 0.45))  # ref mean 1.05, fitted mean 0.45
    forced = gap_table(records_frame(_records("gmm_tilt")), ceiling="tiw_dsm@exact_empirical")
    assert _row(forced, "tiw_dsm@trunk").share == pytest.approx(0.45)


def test_share_bootstrap_is_a_percentile_interval_over_seeds():
    """The same resampling by hand: seeds drawn with replacement, the ratio of mean gains per resample."""
    ref, m, ceil = np.array(REF), np.array(LEARNED), np.array(CEIL)
    share, lo, hi = share_interval(list(ref), list(m), list(ceil), n_boot=500, seed=3)
    idx = np.random.default_rng(3).integers(0, 4, size=(500, 4))
    boots = (ref[idx] - m[idx]).mean(1) / (ref[idx] - ceil[idx]).mean(1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    assert share == pytest.approx(0.45)


def test_report_gap_prints_the_table(tmp_path):
    runs = write(tmp_path, _records())
    r = CliRunner().invoke(app, ["report", "--runs", str(runs), "--gap"])
    assert r.exit_code == 0, r.output
    assert "Gap to the fair ceiling" in r.output
    line = next(x for x in r.output.splitlines() if x.startswith("| fd | tiw_dsm@trunk |"))
    assert "0.45 [" in line and "-0.225" in line
    ceiling = next(x for x in r.output.splitlines() if x.startswith("| fd | tiw_dsm@exact_empirical |"))
    assert "1 (the ceiling)" in ceiling and "-0.5 ±" in ceiling  # its own gain over dsm_ref, resolved
    bad = CliRunner().invoke(app, ["report", "--runs", str(runs), "--gap", "--format", "csv"])
    assert bad.exit_code != 0 and "markdown" in bad.output


def test_the_gap_pairs_within_a_suite():
    """The same cells under two suites (another checkpoint rule: ``<suite>_sel-...``) share seeds: each suite's
    gap is its own, never a mix of the two."""
    from tiwbench.report.gap import gap_table
    from tiwbench.report.leaderboard import records_frame

    def rec(suite, method, seed, fd):
        return {"suite": suite, "dataset": "gmm", "method": method, "ref_frac": 0.01, "seed": seed, "status": "ok",
                "config": {"method": method, "seed": seed},
                "metrics": [{"name": "fd", "value": fd, "higher_is_better": False}]}

    recs = []
    for suite, shift in (("r", 0.0), ("r_sel-truth", 0.05)):
        for s in range(3):
            recs += [rec(suite, "dsm_ref", s, 0.10 + shift + 0.01 * s), rec(suite, "tiw_dsm", s, 0.12 + shift),
                     rec(suite, "tiw_dsm@exact_empirical", s, 0.05 + shift)]
    table = gap_table(records_frame(recs))
    rows = table[table.method == "tiw_dsm"].set_index("suite")
    assert set(rows.index) == {"r", "r_sel-truth"} and (rows.n == 3).all()
    assert rows.loc["r", "vs_ref"] == pytest.approx(0.01) and rows.loc["r_sel-truth", "vs_ref"] == pytest.approx(0.01)
