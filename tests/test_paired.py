"""Paired differences to a reference method, against a t-interval computed by hand."""

from __future__ import annotations

import math

import pytest
from test_report import record, write
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.report.intervals import ReportError
from tiwbench.report.leaderboard import records_frame
from tiwbench.report.paired import paired_table, welch_half

BASE = [1.0, 2.0, 3.0]  # seed-to-seed spread shared by both methods
OTHER = [1.5, 2.1, 3.4]


def _records():
    return ([record("dsm_obs", 0.05, s, v) for s, v in enumerate(BASE)]
            + [record("tiw_dsm", 0.05, s, v) for s, v in enumerate(OTHER)])


def test_paired_interval_matches_hand_computation():
    t = paired_table(records_frame(_records()), "dsm_obs")
    r = t[(t.metric == "fd") & (t.method == "tiw_dsm")].iloc[0]
    # d = (0.5, 0.1, 0.4): mean 1/3; sd² = (1/36 + 49/900 + 1/225)·(1/2) = 0.0433…; t_{0.975, 2} = 4.302652729911275
    sd = math.sqrt(((0.5 - 1 / 3) ** 2 + (0.1 - 1 / 3) ** 2 + (0.4 - 1 / 3) ** 2) / 2)
    assert sd == pytest.approx(0.2081665999466133, rel=1e-12)
    assert r["diff"] == pytest.approx(1 / 3, rel=1e-12)
    assert r.paired_half == pytest.approx(4.302652729911275 * 0.2081665999466133 / math.sqrt(3), rel=1e-9)
    assert r.n == 3
    # Welch on the same seeds: var/n = 1/3 and 0.9433…/3, df = 3.9966…, t ≈ 2.7775
    assert r.unpaired_half == pytest.approx(2.235, abs=2e-3)
    assert r.narrower == pytest.approx(r.paired_half / r.unpaired_half) and r.narrower < 0.25


def test_welch_equal_variances_is_the_pooled_interval():
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]
    # equal n and variances: df = 4 and se = sqrt(2/3); t_{0.975, 4} = 2.7764451051977987
    assert welch_half(a, b) == pytest.approx(2.7764451051977987 * math.sqrt(2 / 3), rel=1e-9)


def test_only_common_seeds_are_paired():
    recs = _records() + [record("tiw_dsm", 0.05, 7, 100.0)]  # seed 7 has no dsm_obs partner
    t = paired_table(records_frame(recs), "dsm_obs")
    assert set(t.n) == {3}


def test_report_vs_prints_paired_differences(tmp_path):
    runs = write(tmp_path / "runs", _records())
    r = CliRunner().invoke(app, ["report", "--runs", str(runs), "--vs", "dsm_obs"])
    assert r.exit_code == 0, r.output
    assert "Paired differences to dsm_obs" in r.output
    line = next(x for x in r.output.splitlines() if "| tiw_dsm |" in x and "| fd |" in x)
    assert "0.3333 ± 0.5171" in line and "better" not in line  # the paired interval contains 0 here
    bad = CliRunner().invoke(app, ["report", "--runs", str(runs), "--vs", "oracle"])
    assert bad.exit_code == 2 and "no finished records" in bad.output


def test_report_vs_on_a_suite_swept_over_a_dataset_parameter(tmp_path):
    # robustness / ref_size_wide: one cell per (ref_frac, swept value, seed); pairs stay within a value
    from tiwbench.records import atomic_write_json, cell_dir, load_records

    runs = tmp_path / "runs"
    for c, shift in ((0.0, 0.0), (0.5, 10.0)):
        for rec in _records():
            rec = {**rec, "suite": "robustness", "sweep": {"contamination": c},
                   "metrics": [{**m, "value": m["value"] + shift} for m in rec["metrics"]]}
            atomic_write_json(cell_dir(runs, rec["suite"], rec["dataset"], rec["method"], rec["ref_frac"],
                                       rec["seed"], rec["sweep"]) / "record.json", rec)
    t = paired_table(records_frame(load_records(runs)), "dsm_obs")
    fd = t[t.metric == "fd"].sort_values("x")
    assert list(fd.x) == [0.0, 0.5] and list(fd.n) == [3, 3]
    # the shift is common to both methods at a value, so the paired difference is the unswept one
    assert fd["diff"].tolist() == pytest.approx([1 / 3, 1 / 3])
    r = CliRunner().invoke(app, ["report", "--runs", str(runs), "--vs", "dsm_obs"])
    assert r.exit_code == 0, r.output
    assert "0.05 · contamination=0.5" in r.output


def test_rows_name_their_suite_when_a_folder_holds_several(tmp_path):
    from tiwbench.report.paired import to_markdown

    recs = _records() + [record(m, 0.05, s, v + 10, suite="unit_x2") for m, vals in (("dsm_obs", BASE),
                                                                                        ("tiw_dsm", OTHER))
                         for s, v in enumerate(vals)]
    text = to_markdown(paired_table(records_frame(recs), "dsm_obs"), "dsm_obs")
    assert "| suite | dataset |" in text and "| unit_x2 | toy2d | fd |" in text and "| unit | toy2d | fd |" in text
    alone = to_markdown(paired_table(records_frame(_records()), "dsm_obs"), "dsm_obs")
    assert "| suite |" not in alone


def test_chosen_pairs_with_borrowed_reference_only_rows_match_a_direct_computation():
    """``report --pairs A:B --borrow TO=FROM:M``: each A − B per seed with its paired t-interval, computed here
    independently; a reference-only method's rows taken from FROM where TO lacks them, said in the section, and
    never a reference level."""
    from scipy import stats

    from tiwbench.report.leaderboard import records_frame
    from tiwbench.report.paired import borrow_rows, pairs_section, pairs_table

    def rec(ds, method, seed, fd):
        return {"suite": "g", "dataset": ds, "method": method, "ref_frac": 0.01, "seed": seed, "status": "ok",
                "config": {"method": method, "seed": seed},
                "metrics": [{"name": "fd", "value": fd, "higher_is_better": False},
                            {"name": "fd_ref_level", "value": 0.001 * (seed + 1), "higher_is_better": False}]}

    gan = {"gmm": [0.30, 0.35, 0.28, 0.40], "gmm_tilt": [0.50, 0.42, 0.47, 0.44]}
    tiw = {"gmm": [0.25, 0.33, 0.29, 0.31], "gmm_tilt": [0.41, 0.40, 0.43, 0.38]}
    ref = [0.10, 0.12, 0.11, 0.13]  # dsm_ref run on gmm only: the same computation on gmm_tilt
    recs = [rec(ds, "gan_ref", s, v) for ds, vs in gan.items() for s, v in enumerate(vs)]
    recs += [rec(ds, "tiw_gan", s, v) for ds, vs in tiw.items() for s, v in enumerate(vs)]
    recs += [rec("gmm", "dsm_ref", s, v) for s, v in enumerate(ref)]
    df, said = borrow_rows(records_frame(recs), "gmm_tilt=gmm:dsm_ref")
    assert said == ["dsm_ref at 0.01 (4 seeds)"]
    table = pairs_table(df, [("tiw_gan", "gan_ref"), ("gan_ref", "dsm_ref")])
    assert set(table.metric) == {"fd"} and len(table) == 4  # two pairs on two datasets; no reference level
    for ds in gan:
        for a, b, va, vb in (("tiw_gan", "gan_ref", tiw[ds], gan[ds]), ("gan_ref", "dsm_ref", gan[ds], ref)):
            d = [x - y for x, y in zip(va, vb, strict=True)]
            half = stats.t.ppf(0.975, 3) * stats.tstd(d) / 2
            (row,) = [r for _, r in table.iterrows() if r.dataset == ds and r.method == a]
            assert row.vs == b and row.n == 4
            assert row["diff"] == pytest.approx(sum(d) / 4) and row.paired_half == pytest.approx(half)
    text = pairs_section(recs, "tiw_gan:gan_ref,gan_ref:dsm_ref", ["gmm_tilt=gmm:dsm_ref"])
    assert "gmm_tilt: dsm_ref at 0.01 (4 seeds) from gmm" in text
    assert "| gmm_tilt | fd | 0.01 | gan_ref − dsm_ref | 4 |" in text
    with pytest.raises(ReportError, match="reference levels"):
        borrow_rows(records_frame(recs), "gmm_tilt=gmm:(reference level)")
    with pytest.raises(ReportError, match="no finished records of 'vae_ref'"):
        pairs_table(df, [("vae_ref", "dsm_ref")])
