"""No record contradicts itself: every `tiwbench run` override against a swept suite files each cell under
the point it ran, `--sweep` chooses points, and report/check refuse a record that disagrees with itself."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.config import ConfigError, load_suite
from tiwbench.records import contradictions
from tiwbench.sweep.runner import expand, run_cells

SUITE = """
name: sw
datasets: [toy2d]
methods: [dsm_obs]
ref_fracs: [0.1]
seeds: [0]
sweep: {contamination: [0.0, 0.5]}
profiles:
  default:
    toy2d:
      train: {steps: 20, batch_size: 64, hidden: 16, depth: 2, lr_warmup: 5, ema_halflife: 5}
      ratio: {steps: 20, batch_size: 64, hidden: 16, depth: 2}
      sample: {n: 200, steps: 4, batch_size: 200}
"""


@pytest.fixture
def suite(tmp_path):
    p = tmp_path / "sw.yaml"
    p.write_text(SUITE)
    return p


def _run(suite, out, *args, threads=1):
    # torch's thread count before the run differs from the one asked for: a record must say the latter
    before = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        return CliRunner().invoke(app, ["run", "--suite", str(suite), "--out", str(out), "--no-report",
                                        "--threads", str(threads), *args])
    finally:
        torch.set_num_threads(before)


def _consistent_records(out):
    """Every record under ``out``, each checked here by hand (not through tiwbench.records): its fields
    are its config's, its swept point is the dataset parameter it set, its directory names that cell,
    and its environment ran the config's thread count."""
    paths = sorted(out.rglob("record.json"))
    assert paths, "no records written"
    records = []
    for p in paths:
        rec = json.loads(p.read_text())
        cfg = rec["config"]
        assert rec["status"] == "ok", rec.get("error")
        for key in ("suite", "dataset", "method", "ref_frac", "seed", "profile"):
            assert rec[key] == cfg[key], (p, key)
        assert rec.get("sweep", {}) == cfg.get("sweep", {}), p
        for key, value in cfg.get("sweep", {}).items():
            assert cfg["dataset_params"][key] == value, (p, key, cfg["dataset_params"][key], value)
        swept = "".join(f"_{k}{v:g}" for k, v in rec.get("sweep", {}).items())
        cell = (rec["suite"], rec["dataset"], rec["method"], f"ref{rec['ref_frac']:g}{swept}_seed{rec['seed']}")
        assert p.parent.relative_to(out).parts == cell, p
        assert rec["env"]["threads"] == cfg["threads"], p
        assert contradictions(rec, p) == [], p
        records.append(rec)
    return records


def _points(recs):
    return sorted(r["config"]["dataset_params"]["contamination"] for r in recs)


# each CLI override, and what it must have changed in the records it wrote
OVERRIDES = {
    "none": ([], lambda recs: _points(recs) == [0.0, 0.5]),
    "data_param": (["--data-param", "n_bias=1500"],
                   lambda recs: all(r["config"]["dataset_params"]["n_bias"] == 1500 for r in recs)),
    "sweep": (["--sweep", "contamination=0.5"], lambda recs: _points(recs) == [0.5]),
    "ratio": (["--methods", "tiw_dsm", "--ratio", "exact"],
              lambda recs: all(r["config"]["ratio"]["provider"] == "exact"
                               and r["ratio"]["time"]["provider"] == "exact" for r in recs)),
    "estimator": (["--methods", "tiw_dsm@exact"],
                  lambda recs: all(r["ratio"]["time@exact"]["provider"] == "exact" for r in recs)),
    "kernel": (["--methods", "dsm_obs~vp", "--sweep", "contamination=0.0"],
               lambda recs: [r["method"] for r in recs] == ["dsm_obs~vp"]),
    "budget_scale": (["--budget-scale", "2"],
                     lambda recs: all(r["suite"] == "sw_x2" and r["config"]["train"]["steps"] == 40 for r in recs)),
    "threads": (["--sweep", "contamination=0.5"], lambda recs: [r["config"]["threads"] for r in recs] == [2]),
    "fid_backend": (["--fid-backend", "clean-fid", "--sweep", "contamination=0.0"],
                    lambda recs: [r["config"]["eval"]["fid_backend"] for r in recs] == ["clean-fid"]),
    "seeds_ref_fracs": (["--seeds", "3", "--ref-fracs", "0.2"],
                        lambda recs: {(r["seed"], r["ref_frac"]) for r in recs} == {(3, 0.2)}),
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_every_override_writes_records_that_agree_with_themselves(tmp_path, suite, name):
    args, took_effect = OVERRIDES[name]
    r = _run(suite, tmp_path / "runs", *args, threads=2 if name == "threads" else 1)
    assert r.exit_code == 0, r.output
    recs = _consistent_records(tmp_path / "runs")
    assert took_effect(recs), [r["config"] for r in recs]


def test_a_data_param_on_the_swept_key_is_refused_or_consistent(tmp_path, suite):
    """The issue's case: --data-param on the swept key relabelled every point with one value."""
    out = tmp_path / "runs"
    r = _run(suite, out, "--data-param", "contamination=0.5")
    if r.exit_code == 0:  # allowed only if what it wrote agrees with itself
        _consistent_records(out)
        return
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith("error: --data-param contamination=0.5") and "--sweep contamination=0.5" in line
    assert not list(out.rglob("record.json"))


def test_a_cell_whose_dataset_params_override_its_point_is_refused_before_running(tmp_path, suite):
    cells = expand(load_suite(str(suite)))
    cells[0].dataset_params["contamination"] = 0.5  # as an override applied after expansion would
    with pytest.raises(ConfigError, match="contamination=0.0 but config.dataset_params.contamination=0.5"):
        run_cells(cells, tmp_path / "runs")
    assert not list((tmp_path / "runs").rglob("record.json"))


def test_sweep_chooses_points_of_the_suite(tmp_path):
    regime = load_suite("regime")
    every = expand(regime, "smoke")
    only = expand(regime, "smoke", sweep={"dim": [16]})
    assert {c.sweep["dim"] for c in every} == {4, 16}
    assert {c.sweep["dim"] for c in only} == {16} and len(only) == len(every) // 2
    # the same cells as the full grid's at d = 16: same configs, same hashes (so records are shared)
    assert sorted(c.hash for c in only) == sorted(c.hash for c in every if c.sweep["dim"] == 16)
    # written as the suite writes it: 16.0 is the point 16, not a new config
    assert [c.hash for c in expand(regime, "smoke", sweep={"dim": [16.0]})] == [c.hash for c in only]
    # a point of the suite outside the profile's smaller grid is allowed (as --ref-fracs is)
    assert {c.sweep["dim"] for c in expand(regime, "smoke", sweep={"dim": [64, 4]})} == {4, 64}


@pytest.mark.parametrize("args, message", [
    (["--sweep", "dim=8"], "--sweep dim=8: not a point of suite 'regime' (dim=4,16,64)"),
    (["--sweep", "rho=0.1"], "--sweep rho=…: suite 'regime' sweeps 'dim', not 'rho'"),
    (["--sweep", "dim"], "write KEY=V1,V2"),
    (["--sweep", "dim=16", "--sweep", "dim=16"], "--sweep dim: 16 is given twice"),
    (["--seeds", "-1"], "--seeds: -1 is negative"),
    (["--seeds", "0,0"], "--seeds: 0 is given twice"),
    (["--ref-fracs", "0.25,0.250"], "--ref-fracs: 0.25 is given twice"),
    (["--data-param", "dim=16"], "--data-param dim=16: suite 'regime' sweeps 'dim' (here 4,16); "
                                 "choose its points with --sweep dim=16"),
])
def test_bad_choices_are_refused_in_one_line(tmp_path, args, message):
    r = CliRunner().invoke(app, ["run", "--suite", "regime", "--profile", "smoke", "--out", str(tmp_path / "o"),
                                 "--no-report", *args])
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert message in line, line
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("record.json"))


def test_sweep_on_a_suite_without_one_names_data_param(tmp_path):
    r = CliRunner().invoke(app, ["run", "--suite", "smoke", "--sweep", "rho=0.1", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "sweeps no dataset parameter; to set one for every cell use --data-param" in r.output


def test_negative_seeds_in_a_suite_are_refused(tmp_path):
    p = tmp_path / "neg.yaml"
    p.write_text(SUITE.replace("seeds: [0]", "seeds: [0, -2]"))
    with pytest.raises(ConfigError, match="-2 is negative"):
        expand(load_suite(str(p)))


def _plant(runs, how):
    """Make one real record contradict itself the way ``how`` says; return its path."""
    zero = runs / "sw/toy2d/dsm_obs/ref0.1_contamination0_seed0/record.json"
    half = runs / "sw/toy2d/dsm_obs/ref0.1_contamination0.5_seed0/record.json"
    rec = json.loads(zero.read_text())
    if how == "dataset_params":  # the record: filed and swept at 0, run at 0.5
        rec["config"]["dataset_params"]["contamination"] = 0.5
    elif how == "config_sweep":
        rec["config"]["sweep"]["contamination"] = 0.5
    elif how == "field":
        rec["seed"] = 1
        zero = zero.parents[1] / "ref0.1_contamination0_seed1/record.json"
        zero.parent.mkdir()
    elif how == "directory":  # a d = 0.5 record copied under the 0 point's directory
        shutil.copy(half, zero)
        return zero
    elif how == "ratio":
        rec["ratio"] = {"time": {"provider": "exact", "kind": "time"}}  # config says learned
    zero.write_text(json.dumps(rec))
    return zero


@pytest.mark.parametrize("how", ["dataset_params", "config_sweep", "field", "directory", "ratio"])
def test_report_and_check_refuse_a_record_that_contradicts_itself(tmp_path, suite, how):
    runs = tmp_path / "runs"
    assert _run(suite, runs).exit_code == 0
    baseline = tmp_path / "baseline.json"
    assert CliRunner().invoke(app, ["baseline", "--from", str(runs), "--output", str(baseline)]).exit_code == 0
    assert CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--runs", str(runs)]).exit_code == 0
    bad = _plant(runs, how)
    for cmd in (["report", "--runs", str(runs)], ["check", "--baseline", str(baseline), "--runs", str(runs)]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 2, (cmd, r.output)
        (line,) = r.output.strip().splitlines()
        assert line.startswith(f"error: {bad}: the record contradicts itself"), line


def test_contradictions_of_hand_made_records():
    rec = {"suite": "s", "dataset": "gmm", "method": "tiw_dsm~vp", "ref_frac": 0.01, "seed": 8,
           "sweep": {"dim": 4},
           "config": {"suite": "s", "dataset": "gmm", "method": "tiw_dsm~vp", "ref_frac": 0.01, "seed": 8,
                      "dataset_params": {"dim": 4}, "sweep": {"dim": 4}, "ratio": {"provider": "learned"}},
           "ratio": {"time~vp": {"provider": "discriminator", "kernel": "vp"},
                     "time@exact~vp": {"provider": "exact", "kernel": "vp"}}}
    path = "runs/s/gmm/tiw_dsm~vp/ref0.01_dim4_seed8/record.json"
    assert contradictions(rec, path) == []
    assert contradictions(rec, "runs/elsewhere/record.json") == []  # not named like a cell: nothing claimed
    assert contradictions({**rec, "config": {"metrics": ["fd"]}}, path) == []  # an old, partial config
    moved = contradictions(rec, "runs/s/gmm/tiw_dsm~vp/ref0.01_dim16_seed8/record.json")
    assert moved == ["filed under s/gmm/tiw_dsm~vp/ref0.01_dim16_seed8 but its config is the cell "
                     "s/gmm/tiw_dsm~vp/ref0.01_dim4_seed8"]
    relabelled = {**rec, "config": {**rec["config"], "dataset_params": {"dim": 16}}}
    assert contradictions(relabelled, path) == ["sweep dim=4 but config.dataset_params.dim=16"]
    unswept = {**rec, "sweep": {}, "config": {**rec["config"], "sweep": {}}}
    assert contradictions(unswept, "x/record.json") == []
    assert contradictions({**rec, "sweep": {"dim": 16}}, "x/record.json") == [
        "sweep {'dim': 16} but config.sweep {'dim': 4}", "sweep dim=16 but config.dataset_params.dim=4"]
    other_estimator = {**rec, "ratio": {"time~vp": {"provider": "exact", "kernel": "vp"}}}
    assert contradictions(other_estimator, path) == [
        "ratio model 'time~vp' names estimator 'learned' but was fitted by 'exact'"]
    other_kernel = {**rec, "ratio": {"time@exact~vp": {"provider": "exact"}}}
    assert contradictions(other_kernel, path) == ["ratio model 'time@exact~vp' but fitted under kernel 'edm'"]
    assert contradictions({**rec, "seed": 9}, "x/record.json") == ["seed 9 but config.seed 8"]


def test_check_keeps_the_points_of_a_swept_suite_apart():
    """Two points of one ref_frac were one baseline key: a baseline compared d = 4 with d = 16."""
    from test_report import record

    from tiwbench.report.baseline_check import check, make_baseline

    def records(shift_at_half=0.0):
        out = []
        for c in (0.0, 0.5):
            for s, v in enumerate([1.0, 1.1, 1.2]):
                out.append({**record("dsm_obs", 0.05, s, v + 10 * c + (shift_at_half if c else 0.0)),
                            "sweep": {"contamination": c}})
        return out

    baseline = make_baseline(records())
    assert sorted(e["sweep"]["contamination"] for e in baseline["entries"] if e["metric"] == "fd") == [0.0, 0.5]
    passed, text, _ = check(baseline, records())
    assert passed, text
    passed, text, rows = check(baseline, records(shift_at_half=1.0))  # worse at 0.5 only
    assert not passed
    assert {r.key[4:] for r in rows if r.verdict == "regression"} == {("fd", "contamination=0.5"),
                                                                       ("bias", "contamination=0.5")}
    assert "unit/toy2d/dsm_obs/ref0.05/contamination=0.5/fd" in text
