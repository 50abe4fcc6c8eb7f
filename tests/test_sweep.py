"""Suites that sweep a dataset parameter: expansion, validation, records, directories and the report's x-axis."""

from __future__ import annotations

import pytest

from tiwbench.config import ConfigError, load_suite
from tiwbench.records import load_records
from tiwbench.report.leaderboard import records_frame, tables, to_markdown
from tiwbench.sweep.runner import expand, run_cells

SWEEP = """
name: sw
datasets: [toy2d]
methods: [dsm_obs, dg_obs, ir_obs]
method_options: {dg_obs: {scale: 0.0}}
ref_fracs: [0.1]
seeds: [0]
ratio: exact
sweep: {contamination: [0.0, 0.5]}
profiles:
  default:
    toy2d:
      train: {steps: 30, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 5, ema_halflife: 5}
      sample: {n: 300, steps: 6, batch_size: 300}
"""


def _suite(tmp_path, text=SWEEP):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load_suite(str(p))


def test_sweep_expands_into_dataset_params_config_and_hash(tmp_path):
    cells = expand(_suite(tmp_path))
    assert len(cells) == 6
    values = sorted({c.dataset_params["contamination"] for c in cells})
    assert values == [0.0, 0.5]
    for c in cells:
        assert c.sweep == {"contamination": c.dataset_params["contamination"]}
        assert c.config()["sweep"] == c.sweep
    assert len({c.hash for c in cells}) == 6 and len({c.group for c in cells}) == 2


@pytest.mark.parametrize("sweep, message", [
    ("{contamnation: [0.1]}", "has no parameter 'contamnation'"),
    ("{contamination: [0.1], rho: [0.1]}", "sweep one dataset parameter"),
    ("{contamination: []}", "at least one value"),
])
def test_bad_sweep_is_refused_with_the_fix(tmp_path, sweep, message):
    text = SWEEP.replace("{contamination: [0.0, 0.5]}", sweep)
    with pytest.raises(ConfigError, match=message):
        expand(_suite(tmp_path, text))


def test_swept_key_also_in_dataset_params_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="both swept and set"):
        expand(_suite(tmp_path, SWEEP + "dataset_params: {toy2d: {contamination: 0.2}}\n"))


def test_sweep_runs_records_and_reports_against_the_swept_parameter(tmp_path):
    out = tmp_path / "runs"
    summary = run_cells(expand(_suite(tmp_path)), out)
    assert len(summary["ok"]) == 6 and not summary["failed"]
    assert (out / "sw/toy2d/dsm_obs/ref0.1_contamination0.5_seed0/record.json").exists()
    records = load_records(out)
    by = {(r["method"], r["sweep"]["contamination"]): r for r in records}
    for v in (0.0, 0.5):
        base, dg = by[("dsm_obs", v)], by[("dg_obs", v)]
        assert base["config"]["dataset_params"]["contamination"] == v
        # dg_obs shares dsm_obs's network; at guidance scale 0 it is the same sampler, the same numbers
        assert dg["train"]["shared_with"] == "dsm_obs" and dg["train"]["final_loss"] == base["train"]["final_loss"]
        assert [m["value"] for m in dg["metrics"]] == [m["value"] for m in base["metrics"]]
        # ir_obs: the same network, its samples resampled by the exact clean ratio (the hook ran)
        ir = by[("ir_obs", v)]
        assert ir["train"]["final_loss"] == base["train"]["final_loss"]
        assert 0 < ir["train"]["sampling"]["resample_ess"] < 1 and ir["train"]["sampling"]["ratio"] == "clean"
        assert [m["value"] for m in ir["metrics"]] != [m["value"] for m in base["metrics"]]
    # contamination moves the reference set, not the biased one
    assert by[("dsm_obs", 0.0)]["data_hashes"]["bias"] == by[("dsm_obs", 0.5)]["data_hashes"]["bias"]
    assert by[("dsm_obs", 0.0)]["data_hashes"]["ref"] != by[("dsm_obs", 0.5)]["data_hashes"]["ref"]

    from tiwbench.report.leaderboard import aggregate

    agg = aggregate(records_frame(records))
    assert set(agg.x_name) == {"contamination"} and sorted(set(agg.x)) == [0.0, 0.5]
    (t, *_) = tables(agg)
    assert t["fracs"] == [0.0, 0.5] and t["labels"][1].startswith("contamination=0.5")
    assert "contamination at ref_frac=0.1" in to_markdown(agg)

    from tiwbench.report.plots import figure

    fig = figure(agg)
    assert fig.axes[0].get_xlabel() == "contamination at ref_frac=0.1"
    assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["0", "0.5"]


def test_digits_sweep_validated_against_its_parameters(tmp_path):
    text = SWEEP.replace("[toy2d]", "[digits_lt]").replace("ratio: exact", "ratio: learned")
    cells = expand(_suite(tmp_path, text))
    assert {c.dataset_params["contamination"] for c in cells} == {0.0, 0.5}
    with pytest.raises(ConfigError, match="no parameter 'std'"):
        expand(_suite(tmp_path, text.replace("contamination: [0.0, 0.5]", "std: [0.1]")))


def test_shipped_sweep_suites():
    from tiwbench.sweep.runner import preflight

    rob = load_suite("robustness")
    assert rob.sweep == {"contamination": [0.0, 0.1, 0.25, 0.5]}
    wide = load_suite("ref_size_wide")
    assert min(wide.ref_fracs) == 0.01 and max(wide.ref_fracs) == 1.0
    preflight(expand(wide, "smoke", datasets=["digits_lt"], methods=["dsm_obs"]))  # every size fits disjointly
    assert 0.125 in load_suite("ffhq_gender").ref_fracs
    for name in ("ref_size", "toy_exact"):  # the 2×2 ablation and the sampling-time baselines are on the board
        assert {"dsm_obs", "tiw_dsm_nocorr", "tiw_dsm_noweight", "tiw_dsm", "dg_obs", "ir_obs"} <= set(
            load_suite(name).methods)


def test_threads_are_part_of_the_config_a_record_is_matched_by(tmp_path):
    from tiwbench.config import load_suite
    from tiwbench.sweep.runner import existing_record, expand, run_cells
    from tiwbench.sweep.threads import free_cores, resolve_threads

    cells = expand(load_suite("smoke"), "smoke", ["toy2d"], ["dsm_ref"], [0.05], [0])
    assert cells[0].threads == 1 and cells[0].config()["threads"] == 1  # one thread unless told otherwise
    run_cells(cells, tmp_path)
    assert existing_record(cells[0], tmp_path) is not None
    cells[0].threads = 2  # the same cell with two threads is another configuration: it runs again
    assert existing_record(cells[0], tmp_path) is None
    assert resolve_threads(3) == 3 and 1 <= resolve_threads(0) <= free_cores()


def test_a_profile_may_run_a_smaller_grid(tmp_path):
    """regime's smoke profile: its own ref_fracs and swept values, one seed; the default its own swept values;
    the paper profile runs the suite's grid."""
    suite = load_suite("regime")
    smoke, default, paper = expand(suite, "smoke"), expand(suite, "default"), expand(suite, "paper")
    assert len(smoke) == 2 * 2 * 2 * 1 * 14 and len(default) == 2 * 2 * 4 * 8 * 14
    assert len(paper) == 2 * 3 * 4 * 8 * 14 and {c.sweep["dim"] for c in default} == {4, 16}
    assert {c.ref_frac for c in smoke} == {0.01, 0.25} and {c.sweep["dim"] for c in smoke} == {4, 16}
    bad = SWEEP.replace("  default:\n    toy2d:\n", "  default:\n    toy2d:\n      sweep: {rho: [0.1]}\n")
    with pytest.raises(ConfigError, match="swept parameter"):
        _suite(tmp_path, bad)
