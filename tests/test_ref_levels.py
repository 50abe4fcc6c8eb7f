"""The reference levels (bias_ref_level, bias_ref, fd_ref_level), the memorization metric, the exact_empirical
ratio and the runner's π, each against an independent computation."""

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


def test_bias_ref_level_is_what_reproducing_d_ref_scores():
    """A method that reproduces D_ref exactly: n_gen samples of the mixture whose labels are drawn in
    D_ref's proportions. Its rms ``bias`` (through the real evaluator), over many such draws, is the level;
    D_ref's label bias alone (the old "floor") leaves out the n_gen samples' noise and is too low."""
    toy = Toy2D()
    split = toy.split(0.05, seed=3)
    ev = toy.evaluator()
    n_gen = 200  # few samples: their noise is comparable to D_ref's own label bias
    ctx = EvalContext(samples=torch.zeros(n_gen, 2), evaluator=ev, split=split, train_data=split.ref)
    res = METRICS.get("bias_ref_level")()(ctx)
    p_ref = np.bincount(split.ref_labels.numpy(), minlength=8) / len(split.ref_labels)
    label_bias = float(np.linalg.norm(p_ref - np.full(8, 1 / 8)))
    assert res["label_bias"] == pytest.approx(label_bias, rel=1e-12) and res["n"] == n_gen
    g = torch.Generator().manual_seed(11)
    biases = []
    for _ in range(400):
        labels = torch.multinomial(torch.as_tensor(p_ref), n_gen, replacement=True, generator=g)
        mix = toy.data_mixture
        x = mix.means[labels] + mix.stds[labels, None] * torch.randn(n_gen, 2, generator=g, dtype=torch.float64)
        ctx.samples = x.float()
        biases.append(_metric("bias", ctx))
    rms = float(np.sqrt(np.mean(np.square(biases))))
    # 400 draws: the rms is known to about 3 %; the few points the posterior labels otherwise add a little
    assert res["value"] == pytest.approx(rms, rel=0.06)
    assert res["value"] > 1.15 * label_bias and rms > 1.15 * label_bias  # the noise is not negligible here
    # the closed form against a direct Monte-Carlo of multinomial proportions (no classifier)
    draws = np.random.default_rng(0).multinomial(n_gen, p_ref, size=200_000) / n_gen
    norms = np.linalg.norm(draws - 1 / 8, axis=1)
    assert res["value"] == pytest.approx(float(np.sqrt(np.mean(norms ** 2))), rel=2e-3)
    assert float(norms.mean()) < res["value"]  # Jensen: the mean norm lies a little below the rms
    # samples that are D_ref itself: bias is D_ref's label bias, and bias against D_ref's proportions is 0
    # (up to the few points the exact posterior labels otherwise than their draw)
    ctx.samples = split.ref
    assert _metric("bias", ctx) == pytest.approx(label_bias, abs=0.02)
    assert _metric("bias_ref", ctx) < 0.02
    assert _metric("memorized", ctx) == 1.0
    assert METRICS.get("bias_ref_level").applies(ctx) and METRICS.get("fd_ref_level").applies(ctx)


def test_older_records_read_as_reference_levels():
    """bias_floor (no sampling noise) and fd_floor of records written before the rename."""
    from tiwbench.report.leaderboard import REF_LEVEL_METHOD, aggregate, records_frame

    props = [0.5, 0.3, 0.2]
    label_bias = float(np.linalg.norm(np.array(props) - 1 / 3))

    def rec(seed, n=None):
        cfg = {"method": "a", "seed": seed, **({"sample": {"n": n}} if n else {})}
        return {"suite": "s", "dataset": "toy2d", "method": "a", "ref_frac": 0.05, "seed": seed, "status": "ok",
                "config": cfg, "metrics": [
                    {"name": "bias", "value": 0.1, "higher_is_better": False},
                    {"name": "bias_floor", "value": label_bias, "proportions": props},
                    {"name": "fd_floor", "value": 0.02 + seed, "n": 100} if n is None else
                    {"name": "fd", "value": 0.5, "higher_is_better": False}]}

    agg = aggregate(records_frame([rec(0), rec(1, n=400)]))
    level = agg[agg.method == REF_LEVEL_METHOD].set_index("metric")
    want = [math.sqrt(label_bias ** 2 + (1 - sum(p * p for p in props)) / n) for n in (100, 400)]
    assert float(level.loc["bias", "mean"]) == pytest.approx(np.mean(want), rel=1e-12)
    assert float(level.loc["fd", "mean"]) == pytest.approx(0.02) and int(level.loc["fd", "n"]) == 1
    assert not {"bias_floor", "fd_floor"} & set(agg.metric)


def test_fd_ref_level_matches_the_unit_gaussian_formula():
    """fd of n fresh N(0, I_d) samples ≈ d/n + d²/(4n) (METHOD.md §5a: 0.11 at d = 64, n = 10,000)."""
    d, n = 64, 10_000
    unit = GaussianMixture(torch.zeros(1, d), 1.0, torch.ones(1))
    ev = MixtureEvaluator(unit)
    values = []
    for seed in range(3):
        split = Toy2D().split(0.05, seed)  # only its hashes seed the fresh draw
        ctx = EvalContext(samples=torch.zeros(n, d), evaluator=ev, split=split)
        values.append(_metric("fd_ref_level", ctx))
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
    # every record carries the reference levels and the memorization share; a level is one number per group
    for r in records.values():
        names = {m["name"]: m["value"] for m in r["metrics"]}
        assert {"bias_ref_level", "bias_ref", "fd_ref_level", "memorized"} <= set(names)
    levels = {next(m["value"] for m in r["metrics"] if m["name"] == "bias_ref_level") for r in records.values()}
    assert len(levels) == 1
    info = records["tiw_dsm@exact_empirical"]["ratio"]["time@exact_empirical"]
    assert sum(info["ref_proportions"]) == pytest.approx(1.0)
