"""The floors (bias_floor, bias_ref, fd_floor), the memorization metric, the exact_empirical ratio and the
runner's π, each against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiwbench.config import RatioConfig, load_suite
from tiwbench.data.gmm import GMM
from tiwbench.data.mixtures import GaussianMixture, MixtureEvaluator, Toy2D
from tiwbench.metrics.base import EvalContext
from tiwbench.metrics.memorization import memorized_share, nearest_two
from tiwbench.records import load_records
from tiwbench.registry import METRICS, RATIOS
from tiwbench.sweep.runner import expand, run_cells


def _metric(name, ctx):
    return METRICS.get(name)()(ctx)["value"]


def test_memorized_on_a_planted_copy_set_and_on_fresh_samples():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 8, generator=g)
    copies = train[:60] + 1e-3 * torch.randn(60, 8, generator=g)
    fresh = torch.randn(140, 8, generator=g)
    samples = torch.cat([copies, fresh])
    # batched nearest two against a brute-force sort of the full distance matrix
    full = torch.cdist(samples.double(), train.double()).sort(dim=1).values[:, :2]
    torch.testing.assert_close(nearest_two(samples, train, batch=7), full)
    flags = full[:, 0] < full[:, 1] / 3
    assert flags[:60].all() and flags[60:].double().mean() < 0.05
    assert memorized_share(samples, train) == pytest.approx(float(flags.double().mean()))
    assert memorized_share(fresh, train) < 0.05
    assert memorized_share(train[:50], train) == 1.0  # the training set itself is all copies


def test_bias_floor_is_what_reproducing_d_ref_scores():
    toy = Toy2D()
    split = toy.split(0.05, seed=3)
    ev = toy.evaluator()
    ctx = EvalContext(samples=split.ref, evaluator=ev, split=split, train_data=split.ref)
    props = np.bincount(split.ref_labels.numpy(), minlength=8) / len(split.ref_labels)
    floor = float(np.linalg.norm(props - np.full(8, 1 / 8)))
    assert _metric("bias_floor", ctx) == pytest.approx(floor, rel=1e-12)
    # samples that are D_ref itself: bias is the floor, and bias against D_ref's proportions is 0
    # (up to the few points the exact posterior labels otherwise than their draw)
    assert _metric("bias", ctx) == pytest.approx(floor, abs=0.02)
    assert _metric("bias_ref", ctx) < 0.02
    assert _metric("memorized", ctx) == 1.0
    assert METRICS.get("bias_floor").applies(ctx) and METRICS.get("fd_floor").applies(ctx)


def test_fd_floor_matches_the_unit_gaussian_formula():
    """fd of n fresh N(0, I_d) samples ≈ d/n + d²/(4n) (METHOD.md §5a: 0.11 at d = 64, n = 10,000)."""
    d, n = 64, 10_000
    unit = GaussianMixture(torch.zeros(1, d), 1.0, torch.ones(1))
    ev = MixtureEvaluator(unit)
    values = []
    for seed in range(3):
        split = Toy2D().split(0.05, seed)  # only its hashes seed the fresh draw
        ctx = EvalContext(samples=torch.zeros(n, d), evaluator=ev, split=split)
        values.append(_metric("fd_floor", ctx))
    assert np.mean(values) == pytest.approx(d / n + d * d / (4 * n), rel=0.1)


def test_exact_empirical_is_the_truth_reweighted_to_d_ref():
    ds = GMM(dim=6, modes=4, rank=2, rho=0.05, tilt=0.5, n_bias=400)
    split = ds.split(0.05, seed=1)
    cfg = RatioConfig()
    est = RATIOS.get("exact_empirical")(ds, cfg, True)
    est.split = split
    model, info = est.fit(split.bias, split.ref, torch.Generator())
    model.logit_max = 1e9
    p_ref = torch.bincount(split.ref_labels, minlength=4).double() / len(split.ref_labels)
    assert info["ref_proportions"] == pytest.approx(p_ref.tolist())
    x = torch.randn(30, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for sigma in (0.1, 1.0):
        # a second computation: Σ_k p̂_k N_k,σ(x) component by component, over p_bias,σ
        comps = ds.data_mixture.with_weights(torch.ones(4)).log_joint(x, sigma) + math.log(4)
        num = torch.logsumexp(comps + p_ref.log(), 1)
        want = num - ds.bias_mixture.log_prob(x, sigma)
        torch.testing.assert_close(model.log_ratio(x, sigma), want, rtol=1e-9, atol=1e-9)
    with pytest.raises(Exception, match="labels"):
        fresh = RATIOS.get("exact_empirical")(ds, cfg, True)
        fresh.fit(split.bias, split.ref, torch.Generator())


TINY = """
name: pi
datasets: [toy2d]
methods: [dsm_obs, dg_obs, ir_obs, tiw_dsm@exact_empirical]
ref_fracs: [0.1]
seeds: [0]
metrics: [fd, bias, memorized]
ratio: exact
dataset_params: {toy2d: {n_bias: 400, n_oracle: 100}}
profiles:
  default:
    toy2d:
      train: {steps: 20, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 5, ema_halflife: 5}
      sample: {n: 200, steps: 4, batch_size: 200}
"""


def test_runner_pi_is_the_share_of_d_ref(tmp_path, monkeypatch, one_thread):
    """π, the share of D_ref in p_obs = π p_data + (1 − π) p_bias that dg_obs and ir_obs correct by, is
    n_ref/(n_ref + n_bias) as the closed form assumes (a 1 − π slip would give 10/11 here)."""
    from baselines.dg_obs import DGObs
    from baselines.ir_obs import IRObs

    seen = {}
    orig_dg, orig_ir = DGObs.sampling_denoiser, IRObs.finish_samples

    def spy_dg(self, net, ratio=None, ref_share=0.0):
        seen["dg_obs"] = ref_share
        return orig_dg(self, net, ratio, ref_share)

    def spy_ir(self, samples, ratio=None, ref_share=0.0, generator=None):
        seen["ir_obs"] = ref_share
        return orig_ir(self, samples, ratio, ref_share, generator)

    monkeypatch.setattr(DGObs, "sampling_denoiser", spy_dg)
    monkeypatch.setattr(IRObs, "finish_samples", spy_ir)
    p = tmp_path / "pi.yaml"
    p.write_text(TINY)
    summary = run_cells(expand(load_suite(str(p))), tmp_path / "runs")
    assert not summary["failed"]
    assert seen["dg_obs"] == pytest.approx(40 / 440) and seen["ir_obs"] == pytest.approx(40 / 440)
    records = {r["method"]: r for r in load_records(tmp_path / "runs")}
    assert records["dg_obs"]["train"]["sampling"]["ref_share"] == pytest.approx(40 / 440)
    # every record carries the floors and the memorization share; the floor is one number per group
    for r in records.values():
        names = {m["name"]: m["value"] for m in r["metrics"]}
        assert {"bias_floor", "bias_ref", "fd_floor", "memorized"} <= set(names)
    floors = {next(m["value"] for m in r["metrics"] if m["name"] == "bias_floor") for r in records.values()}
    assert len(floors) == 1
    info = records["tiw_dsm@exact_empirical"]["ratio"]["time@exact_empirical"]
    assert sum(info["ref_proportions"]) == pytest.approx(1.0)
