"""The ratio study's numbers from hand-made records: relative errors, intervals over seeds, the pooled
correction error, differences paired by seed; and the report's hook."""

import json
import math

import pytest
from scipy import stats

from tiwbench.report import ratio_study
from tiwbench.report.render import report


def _band(lo, hi, shift_mse, shift_norm=0.2, log_mse=0.01, log_norm=0.1, acc=0.6):
    return {"sigma_lo": lo, "sigma_hi": hi, "accuracy": acc, "ece": 0.01, "clip_rate": 0.0,
            "ratio_mse": 2 * log_mse, "ratio_norm": 2 * log_norm, "log_ratio_mse": log_mse,
            "log_ratio_norm": log_norm, "shift_mse": shift_mse, "shift_norm": shift_norm}


def _record(method, seed, bias, ratio, provider="learned"):
    return {"suite": "s", "dataset": "toy2d", "method": method, "ref_frac": 0.05, "seed": seed, "status": "ok",
            "profile": "default", "ref_size": 100, "config_hash": f"{method}{seed}",
            "config": {"method": method, "seed": seed, "ratio": {"provider": provider}},
            "metrics": [{"name": "bias", "value": bias, "higher_is_better": False}], "ratio": ratio}


def _records():
    recs = []
    for seed, (disc_err, dd_err) in enumerate([(1.0, 0.02), (3.0, 0.06)]):
        time_disc = {"provider": "learned", "per_sigma": [_band(0.2, 1.0, 0.01), _band(5.0, 80.0, disc_err)]}
        clean = {"provider": "learned", "per_sigma": [{"sigma_lo": 0.0, "sigma_hi": 0.0, "accuracy": 0.7,
                                                      "ece": 0.02, "ratio_mse": 0.3, "ratio_norm": 1.5,
                                                      "log_ratio_mse": 0.2, "log_ratio_norm": 0.8}]}
        dd = {"provider": "denoiser_diff", "kind": "time",
              "per_sigma": [_band(0.2, 1.0, 0.002), _band(5.0, 80.0, dd_err)]}
        recs += [_record("iw_dsm", seed, 0.10 + 0.01 * seed, {"clean": clean}),
                 _record("tiw_dsm", seed, 0.14 + 0.03 * seed, {"time": time_disc, "clean": clean}),
                 _record("tiw_dsm@denoiser_diff", seed, 0.05 + 0.02 * seed,
                         {"time": time_disc, "clean": clean, "time@denoiser_diff": dd})]
    return recs


def test_relative_errors_and_their_intervals_over_seeds():
    df = ratio_study.band_frame(_records())
    agg = ratio_study.aggregate_bands(df).set_index(["estimator", "sigma_lo"])
    hi = agg.loc[("discriminator", 5.0)]
    errs = [1.0 / 0.2, 3.0 / 0.2]  # mse / signal per seed
    assert hi.correction == pytest.approx(sum(errs) / 2)
    half = stats.t.ppf(0.975, 1) * abs(errs[1] - errs[0]) / math.sqrt(2) / math.sqrt(2)  # std of two = |Δ|/√2
    assert hi.correction_ci == pytest.approx(half)
    assert hi.log_w == pytest.approx(0.1) and hi.w == pytest.approx(0.1) and hi.correction_n == 2
    clean = agg.loc[(ratio_study.CLEAN, 0.0)]
    assert clean.log_w == pytest.approx(0.25) and clean.w == pytest.approx(0.2) and clean.accuracy == 0.7
    assert math.isnan(clean.correction)  # a clean classifier has no correction
    assert agg.loc[("denoiser_diff", 0.2)].correction == pytest.approx(0.01)


def test_pooled_correction_error_and_paired_differences():
    out = ratio_study.outcome_frame(_records())
    row = out[(out.method == "tiw_dsm@denoiser_diff") & (out.seed == 1)].iloc[0]
    assert row.estimator == "denoiser_diff"
    assert row.correction_error == pytest.approx((0.002 + 0.06) / 0.4)  # Σ mse / Σ signal over the bands
    plain = out[(out.method == "tiw_dsm") & (out.seed == 0)].iloc[0]
    assert plain.estimator == "discriminator" and plain.correction_error == pytest.approx(1.01 / 0.4)
    d = ratio_study.paired_differences(out).set_index("method")
    # tiw_dsm@denoiser_diff − iw_dsm per seed: 0.05−0.10 = −0.05, 0.07−0.11 = −0.04
    assert d.loc["tiw_dsm@denoiser_diff", "diff"] == pytest.approx(-0.045)
    assert d.loc["tiw_dsm@denoiser_diff", "ci"] == pytest.approx(stats.t.ppf(0.975, 1) * 0.01 / math.sqrt(2)
                                                                 / math.sqrt(2))
    assert d.loc["tiw_dsm", "diff"] == pytest.approx(0.05) and d.loc["tiw_dsm", "n"] == 2


def test_report_adds_the_study_only_for_suites_comparing_estimators(tmp_path):
    for i, rec in enumerate(_records()):
        p = tmp_path / "runs" / f"c{i}" / "record.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"schema_version": 1, "timing": {}, "env": {}, **rec}))
    text = report(tmp_path / "runs", plot=tmp_path / "fig.png")
    assert "## Ratio study" in text and "| denoiser_diff |" in text and "| tiw_dsm@denoiser_diff |" in text
    assert (tmp_path / "fig_ratio_error.png").stat().st_size > 0
    assert (tmp_path / "fig_ratio_outcome.png").stat().st_size > 0
    assert ratio_study.to_markdown([r for r in _records() if "@" not in r["method"]]) == ""


def test_run_then_report_end_to_end(tmp_path):
    """A suite training tiw_dsm with two estimators: two cells, two rows, and the study's tables."""
    from typer.testing import CliRunner

    from tiwbench.cli import app

    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "name: tiny\ndatasets: [toy2d]\nmethods: [tiw_dsm, tiw_dsm@exact]\nref_fracs: [0.25]\nseeds: [0]\n"
        "dataset_params: {toy2d: {n_bias: 400}}\n"
        "profiles:\n  default:\n    toy2d:\n      train: {steps: 30, hidden: 16}\n"
        "      ratio: {steps: 30, hidden: 16}\n      sample: {n: 200, steps: 4}\n")
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["run", "--suite", str(suite), "--out", str(out), "--no-report"])
    assert r.exit_code == 0, r.output
    recs = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in out.rglob("record.json")}
    assert set(recs) == {"tiw_dsm", "tiw_dsm@exact"}
    assert recs["tiw_dsm@exact"]["ratio"]["time@exact"]["provider"] == "exact"
    assert recs["tiw_dsm"]["ratio"]["time"]["provider"] == "discriminator"
    r = CliRunner().invoke(app, ["report", "--runs", str(out)])
    assert r.exit_code == 0 and "| tiw_dsm@exact |" in r.output and "## Ratio study" in r.output
    assert "| discriminator |" in r.output


def test_paired_band_ratios_pair_by_seed_against_edm_and_the_discriminator():
    """log10 of an estimator's error over its reference's, per seed: against the same estimator under edm
    and against the discriminator under the same kernel; means and Student-t half-widths by hand."""
    import pandas as pd

    from tiwbench.report.ratio_study import paired_band_ratios, reference_of

    assert reference_of("dlsm~vp") == ["dlsm", "discriminator~vp"] and reference_of("discriminator") == []
    rows = []
    errs = {"discriminator": [1.0, 2.0, 4.0], "discriminator~vp": [0.1, 0.4, 0.4], "dlsm~vp": [0.01, 0.4, 4.0]}
    for est, values in errs.items():
        for seed, v in enumerate(values):
            rows.append({"suite": "s", "dataset": "toy2d", "ref_frac": 0.05, "seed": seed, "estimator": est,
                         "sigma_lo": 1.0, "sigma_hi": 5.0, "log_w": v, "correction": v})
    out = paired_band_ratios(pd.DataFrame(rows), measures=("correction",), target="")
    got = {(r.estimator, r.against): r for r in out.itertuples()}
    assert set(got) == {("discriminator~vp", "discriminator"), ("dlsm~vp", "discriminator~vp")}
    d = [math.log10(a / b) for a, b in zip(errs["discriminator~vp"], errs["discriminator"], strict=True)]
    r = got["discriminator~vp", "discriminator"]
    assert r.n == 3 and r.mean == pytest.approx(sum(d) / 3)
    assert r.ci == pytest.approx(stats.t.ppf(0.975, 2) * pd.Series(d).std(ddof=1) / math.sqrt(3))
    assert got["dlsm~vp", "discriminator~vp"].mean == pytest.approx((-1 + 0 + 1) / 3)


def test_a_band_without_signal_has_no_relative_error():
    # label-only bias: inside a mode w_σ is flat at low σ, so the exact correction there is ~0
    bands = [_band(0.002, 0.05, 0.01, shift_norm=1e-27), _band(0.2, 1.0, 0.01, shift_norm=2e-4),
             _band(5.0, 80.0, 0.5, shift_norm=0.1)]
    df = ratio_study.band_frame([_record("tiw_dsm", 0, 0.1, {"time": {"provider": "learned", "per_sigma": bands}})])
    rel = dict(zip(df.sigma_lo, df.correction, strict=True))
    assert math.isnan(rel[0.002])  # 1e-26 of the largest band's signal: no relative error
    assert rel[0.2] == pytest.approx(0.01 / 2e-4) and rel[5.0] == pytest.approx(5.0)  # 2e-3 of it: kept
    assert df.log_w.notna().all()  # the other measures keep their (ample) signal


def _targets_records():
    """discriminator and dlsm, two seeds, one band; errors against the truth, the attainable target and
    that target's gap planted (relative to a signal of 0.5)."""
    recs = []
    planted = {0: {"disc": (1.0, 0.8), "dlsm": (0.5, 0.2), "gap": 0.3},
               1: {"disc": (2.0, 1.5), "dlsm": (0.4, 0.1), "gap": 0.25}}
    for seed, p in planted.items():
        def band(mse, att):
            return {**_band(1.0, 5.0, mse, shift_norm=0.5), "shift_mse_att": att, "shift_gap": p["gap"],  # noqa: B023
                    "log_ratio_mse_att": 0.005, "log_ratio_gap": 0.004, "ratio_mse_att": 0.01, "ratio_gap": 0.008}
        ratio = {"time": {"provider": "discriminator", "per_sigma": [band(*p["disc"])]},
                 "time@dlsm": {"provider": "dlsm", "kind": "time", "per_sigma": [band(*p["dlsm"])]}}
        recs += [_record("tiw_dsm", seed, 0.1, ratio), _record("tiw_dsm@dlsm", seed, 0.08, ratio)]
    return recs


def test_errors_against_the_truth_and_the_attainable_target():
    """Both columns as planted (mse / the truth's signal); the attainable target's own error is a reference
    row; the paired tables and the pooled correction error use the attainable target."""
    df = ratio_study.band_frame(_targets_records())
    agg = ratio_study.aggregate_bands(df).set_index("estimator")
    assert agg.loc["dlsm", "correction"] == pytest.approx((0.5 + 0.4) / 2 / 0.5)
    assert agg.loc["dlsm", "correction_att"] == pytest.approx((0.2 + 0.1) / 2 / 0.5)
    assert agg.loc["discriminator", "correction_att"] == pytest.approx((0.8 + 1.5) / 2 / 0.5)
    assert agg.loc[ratio_study.ATTAINABLE_ROW, "correction"] == pytest.approx((0.3 + 0.25) / 2 / 0.5)
    assert agg.loc[ratio_study.ATTAINABLE_ROW, "log_w"] == pytest.approx(0.004 / 0.1)
    pairs = ratio_study.paired_band_ratios(df, measures=("correction",)).set_index("estimator")
    assert pairs.loc["dlsm", "mean"] == pytest.approx((math.log10(0.2 / 0.8) + math.log10(0.1 / 1.5)) / 2)
    truth = ratio_study.paired_band_ratios(df, measures=("correction",), target="").set_index("estimator")
    assert truth.loc["dlsm", "mean"] == pytest.approx((math.log10(0.5 / 1.0) + math.log10(0.4 / 2.0)) / 2)
    out = ratio_study.outcome_frame(_targets_records()).set_index(["method", "seed"])
    assert out.loc[("tiw_dsm@dlsm", 1), "correction_error_att"] == pytest.approx(0.1 / 0.5)
    assert out.loc[("tiw_dsm@dlsm", 1), "correction_error"] == pytest.approx(0.4 / 0.5)
    text = ratio_study.to_markdown(_targets_records())
    assert "error of σ²∇log w relative to its signal against the attainable target" in text
    assert f"| _{ratio_study.ATTAINABLE_ROW}_ | 0.55 ±" in text
    assert "σ²∇log w relative to its signal against the attainable target: log10" in text
    assert f"| dlsm | discriminator | {pairs.loc['dlsm', 'mean']:.3g} ±" in text
    # records without the attainable target: the paired tables fall back to the truth and say so
    old = _records()
    assert "against the truth (no attainable target recorded)" in ratio_study.to_markdown(old)


def test_two_schedules_never_share_a_row():
    """The same seed under vp with β_max 19.9 and 20 (its default): two estimators and two methods, the
    old schedule named; edm's rows, whose own parameters are the defaults, carry no tag."""
    recs = []
    for beta_max, err in ((19.9, 0.5), (20.0, 0.1)):
        kernel = {"edm": {"p_mean": -1.2, "p_std": 1.2}, "vp": {"beta_min": 0.1, "beta_max": beta_max, "eps_t": 0.001}}
        ratio = {"time~vp": {"provider": "discriminator", "kind": "time", "kernel": "vp",
                             "per_sigma": [_band(1.0, 5.0, err)]}}
        for method, bias in (("tiw_dsm~vp", 0.2), ("iw_dsm~vp", 0.1)):
            rec = _record(method, 0, bias + err, ratio)
            rec["config"]["kernel"] = kernel
            recs.append(rec)
        edm = _record("tiw_dsm", 0, 0.1, {"time": {"provider": "discriminator", "per_sigma": [_band(1.0, 5.0, 1.0)]}})
        edm["config"]["kernel"] = kernel
        recs.append(edm)
    agg = ratio_study.aggregate_bands(ratio_study.band_frame(recs)).set_index("estimator")
    assert agg.loc["discriminator~vp", "correction"] == pytest.approx(0.1 / 0.2)
    assert agg.loc["discriminator~vp [beta_max=19.9]", "correction"] == pytest.approx(0.5 / 0.2)
    assert agg.loc["discriminator", "correction_n"] == 1
    out = ratio_study.outcome_frame(recs)
    assert set(out.method) == {"tiw_dsm~vp", "iw_dsm~vp", "tiw_dsm~vp [beta_max=19.9]", "iw_dsm~vp [beta_max=19.9]",
                               "tiw_dsm"}
    d = ratio_study.paired_differences(out).set_index("method")
    assert d.loc["tiw_dsm~vp [beta_max=19.9]", "diff"] == pytest.approx(0.1)  # against its own schedule's iw_dsm
