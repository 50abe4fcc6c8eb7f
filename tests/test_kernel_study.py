"""The kernel axis through the runner: `method~kernel` cells, the kernel_study suite, and edm's configs
unchanged (their hashes are the committed smoke baseline's)."""

import dataclasses
import json
from pathlib import Path

import pytest

from tiwbench.config import ConfigError, load_suite
from tiwbench.report.ratio_study import to_markdown
from tiwbench.sweep.runner import expand, method_and_ratio, method_kernel, run_cells

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ("vp", "subvp", "ve")


def test_edm_configs_keep_the_baselines_hashes():
    """Cells under the default kernel hash as before kernels existed: every smoke cell's hash is one
    the committed baseline recorded."""
    baseline = json.loads((ROOT / "results/baselines/smoke.json").read_text())
    known = {h for e in baseline["entries"] for h in e.get("config_hashes", [])}
    cells = expand(load_suite("smoke"), "smoke", datasets=["toy2d"])
    assert cells and {c.hash for c in cells} <= known
    assert "kernel" not in cells[0].config()


def test_method_names_carry_the_kernel():
    assert method_and_ratio("tiw_dsm@exact+dlsm~vp") == ("tiw_dsm", "exact+dlsm")
    assert method_kernel("tiw_dsm@exact~ve") == "ve" and method_kernel("dsm_obs") == "edm"
    with pytest.raises(KeyError, match="Did you mean 'vp'"):
        expand(load_suite("smoke"), "smoke", datasets=["toy2d"], methods=["dsm_obs~vpp"])


def test_kernel_study_suite_covers_every_kernel_with_eight_seeds():
    suite = load_suite("kernel_study")
    cells = expand(suite, "default")
    assert {method_kernel(c.method) for c in cells} == {"edm", *KERNELS}
    assert len({c.seed for c in cells}) >= 8
    for base in ("dsm_obs", "oracle", "iw_dsm", "tiw_dsm"):
        assert {f"{base}~{k}" for k in KERNELS} <= {c.method for c in cells}
    assert cells[0].budget.kernel["vp"] == {"beta_min": 0.1, "beta_max": 20.0, "eps_t": 0.001}


def test_a_bad_schedule_parameter_is_refused(tmp_path):
    text = (ROOT / "suites/kernel_study.yaml").read_text().replace("beta_max: 20.0", "beta_maks: 20.0")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match="beta_maks"):
        load_suite(str(tmp_path / "bad.yaml"))


def test_cells_run_under_each_kernel(tmp_path, one_thread):
    """Tiny budgets: every kernel trains, samples and records; a sampling-time method reuses the network
    of its base under the same kernel; the ratio study names the kernel of each estimator."""
    suite = load_suite("kernel_study")
    methods = [f"dsm_obs~{k}" for k in KERNELS] + ["dg_obs~vp", "tiw_dsm@exact+discriminator~vp"]
    cells = expand(suite, "smoke", methods=methods)
    for c in cells:
        c.budget = dataclasses.replace(c.budget, train=dataclasses.replace(c.budget.train, steps=40),
                                       ratio=dataclasses.replace(c.budget.ratio, steps=20),
                                       sample=dataclasses.replace(c.budget.sample, n=200, steps=6))
    summary = run_cells(cells, tmp_path)
    assert not summary["failed"] and len(summary["ok"]) == len(methods)
    recs = {r["method"]: r for r in (json.loads(Path(p).read_text()) for p in summary["ok"])}
    assert recs["dg_obs~vp"]["train"]["shared_with"] == "dsm_obs~vp"
    assert recs["dg_obs~vp"]["train"]["final_loss"] == recs["dsm_obs~vp"]["train"]["final_loss"]
    assert recs["dsm_obs~ve"]["train"]["final_loss"] != recs["dsm_obs~vp"]["train"]["final_loss"]
    assert recs["dsm_obs~vp"]["config"]["kernel"]["vp"]["beta_max"] == 20.0
    assert set(recs["tiw_dsm@exact+discriminator~vp"]["ratio"]) >= {"time~vp", "time@exact~vp"}
    assert "discriminator~vp" in to_markdown(list(recs.values()))
