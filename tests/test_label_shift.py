"""`label_shift` and `class_posterior` (ratios/label_shift.py; METHOD.md §10): w_σ = Σ_k (q_k/p_k) P_bias(k | x_σ)
against the closed forms of `exact_empirical`, the fit's clusters and priors against the truth, the Dirichlet
prior, the prior correction of a D_obs mixture, the image path's structure, and whole runs."""

import json
import math

import pytest
import torch

from tiwbench.config import RatioConfig, load_suite
from tiwbench.data.gmm import GMM
from tiwbench.data.mixtures import ExactRatio, Toy2D
from tiwbench.diffusion.kernels import make_kernel
from tiwbench.ratios import label_shift as ls
from tiwbench.registry import RATIOS
from tiwbench.report.ceilings import record_is_ceiling

SIGMAS = (0.0, 0.05, 0.3, 1.0, 5.0, 30.0)


def _props(labels, k):
    return torch.bincount(labels.long(), minlength=k).double() / len(labels)


def _points(split):
    """Evaluation points from both sets, so that every class's region and the gaps between are visited."""
    return torch.cat([split.bias[:300], split.ref[:300]]).double()


def _dense(ds) -> ls.FullCovMixture:
    """The truth's components as full covariances, written out densely (an independent path to log N_k)."""
    comps = ds.family_components()
    if hasattr(comps, "component_cov"):
        cov = comps.component_cov()
    else:
        cov = torch.stack([s**2 * torch.eye(comps.dim, dtype=torch.float64) for s in comps.stds])
    return ls.FullCovMixture(comps.means, cov, comps.weights)


def _assert_same(mine, want, x, sigmas=SIGMAS, tol=1e-6):
    for s in sigmas:
        for a, b in zip(mine.log_ratio_and_grad(x, s), want.log_ratio_and_grad(x, s)):
            torch.testing.assert_close(a, b, rtol=0, atol=tol)
        torch.testing.assert_close(mine.logit(x, s), want.logit(x, s), rtol=0, atol=tol)


@pytest.mark.parametrize("ds", [Toy2D(), GMM(dim=6, rank=2, modes=4, n_bias=2000)], ids=["toy2d", "gmm"])
@pytest.mark.parametrize("dense", [False, True], ids=["given", "full_cov"])
def test_given_the_true_components_it_is_exact_empirical(ds, dense, one_thread):
    """With the truth's components (as the dataset has them, or rewritten as full covariances), p = the true
    p_bias weights and q = D_ref's label shares, Σ_k (q_k/p_k) P_bias(k | x_σ) and its autograd ∇ₓ log are
    `exact_empirical`'s closed forms (log-density and score differences) to 1e-6, clean and time-dependent, and
    under a VP kernel's x_t = s(t)(y + σ(t)n)."""
    split = ds.split(0.1, 0)
    q = _props(split.ref_labels, ds.num_classes)
    comps = _dense(ds) if dense else ds.family_components()
    x = _points(split)
    for td in (True, False):
        mine = ls.label_shift_ratio(comps, ds.bias_mixture.weights, q, time_dependent=td)
        _assert_same(mine, ds.empirical_ratio(q, td), x)
    mine, want = ls.label_shift_ratio(comps, ds.bias_mixture.weights, q), ds.empirical_ratio(q)
    kernel = make_kernel("vp")
    for t in (0.05, 0.5):
        x_t = kernel.perturb(x, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                                               dtype=torch.float64))
        for a, b in zip(mine.log_ratio_at_time(x_t, t, kernel), want.log_ratio_at_time(x_t, t, kernel)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_the_clip_and_its_counters_match_exact_ratio():
    """Far from every mode log w exceeds ±logit_max: clipped there, the gradient zero, and the counters (only the
    ``count`` rows) as `ExactRatio`'s."""
    ds = Toy2D()
    q = torch.tensor([0.93] + [0.01] * 7, dtype=torch.float64)
    mine = ls.label_shift_ratio(ds.family_components(), ds.bias_mixture.weights, q)
    want = ds.empirical_ratio(q)
    mine.logit_max = want.logit_max = 2.0
    x = torch.cat([ds.bias_mixture.sample(50, torch.Generator().manual_seed(0))[0], 3 * torch.randn(50, 2).double()])
    count = torch.arange(100) % 3 == 0
    for a, b in zip(mine.log_ratio_and_grad(x, 0.1, count), want.log_ratio_and_grad(x, 0.1, count)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    torch.testing.assert_close(mine.log_ratio(x, 0.1), want.log_ratio_and_grad(x, 0.1)[0], rtol=0, atol=1e-9)
    assert 0 < mine.clipped == want.clipped and mine.seen == want.seen == 34 + 100
    assert mine.clip_rate == pytest.approx(mine.clipped / mine.seen)


def _cluster_to_class(clusters, labels, k_clusters):
    """Each cluster's majority true class (the test's only use of the labels beside the estimator's diagnostics)."""
    table = torch.zeros(k_clusters, int(labels.max()) + 1)
    table.index_put_((clusters, labels.long()), torch.ones(len(labels)), accumulate=True)
    return table.argmax(1)


def test_the_fit_recovers_the_classes_and_their_proportions(one_thread):
    """toy2d (modes 7.6 stds apart), |D_bias| = 4,000, |D_ref| = 2,000: the clusters are the classes (purity ≥ 0.95),
    and p̂, q̂ summed over each class's clusters are within 4 binomial standard errors sqrt(π(1−π)/n) of the true
    proportions, plus the Dirichlet prior's known shrinkage Kα|c − π|/(n + Kα) toward its centre c (p̂ for q̂;
    none for p̂)."""
    ds = Toy2D(n_bias=4000)
    split = ds.split(0.5, 0)
    est = RATIOS.get("label_shift")(ds, RatioConfig(), True)
    est.split = split
    model, info = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
    assert info["purity"] >= 0.95
    assert ds.num_classes <= info["K"] <= 2 * ds.num_classes and info["alpha"] in ls.ALPHA_GRID
    k, alpha = info["K"], info["alpha"]
    # the fitted mixture's hard clusters, recomputed from the model's own posterior at σ = 0
    obs = torch.cat([split.ref, split.bias]).double()
    clusters = model.log_posterior(obs, 0.0).argmax(1)
    to_class = _cluster_to_class(clusters, torch.cat([split.ref_labels, split.bias_labels]), k)
    for key, truth, n in (("p_hat", ds.bias_mixture.weights, len(split.bias)),
                          ("q_hat", ds.data_mixture.weights, len(split.ref))):
        est_k = torch.zeros(ds.num_classes, dtype=torch.float64).index_add_(0, to_class,
                                                                            torch.tensor(info[key]).double())
        # the prior's centre, summed per class as the estimates are: p̂ for q̂, nothing for p̂ itself
        center = torch.zeros(ds.num_classes, dtype=torch.float64).index_add_(0, to_class,
                                                                             torch.tensor(info["p_hat"]).double())
        shrink = k * alpha * (center - truth).abs() / (n + k * alpha) if key == "q_hat" else 0.0
        tol = 4 * (truth * (1 - truth) / n).sqrt() + shrink
        assert ((est_k - truth).abs() <= tol).all(), (key, est_k, truth, tol)
    assert info["prior_ratio_error"] < 0.1  # log-ratio per class, against D_ref's and D_bias's label shares


def test_without_the_dirichlet_prior_an_empty_cluster_gets_no_weight(one_thread):
    """No D_ref point of class 0 (removed): with α = 0 the maximum-likelihood q̂_0 → 0 and w_σ → 0 on class 0's
    points; with α > 0 it stays positive there. Through the priors' EM directly and through the estimator's fit
    (its α grid pinned to one value)."""
    ds = Toy2D(n_bias=2000)
    split = ds.split(0.1, 1)
    keep = split.ref_labels != 0
    split.ref, split.ref_labels = split.ref[keep], split.ref_labels[keep]
    at_class0 = split.bias[split.bias_labels == 0][:50].double()
    comps = ds.family_components()
    lik = comps.log_joint(split.ref.double())  # unit weights: log N_k(x) + const
    p = ds.bias_mixture.weights
    for alpha, empty in ((0.0, True), (1.0, False)):
        q = ls.em_priors(lik, torch.full((8,), 1 / 8), alpha, center=p)
        w = ls.label_shift_ratio(comps, p, q).logit(at_class0, 0.0).exp()
        if empty:
            assert q[0] < 1e-12 and (w < 1e-4).all() and w.median() < 1e-8
        else:  # Kα pseudo-counts spread as p: class 0 keeps 8α·p_0 of them
            assert q[0] == pytest.approx(8 * alpha * float(p[0]) / (len(split.ref) + 8 * alpha), rel=1e-3)
            assert (w > 1e-3).all()
    for grid, empty in (((0.0,), True), ((1.0,), False)):
        est = RATIOS.get("label_shift")(ds, RatioConfig(), True)
        est.alpha_grid = grid
        model, info = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
        assert info["alpha"] == grid[0]
        w = model.logit(at_class0, 0.0).exp()
        assert (w < 1e-4).all() and w.median() < 1e-8 if empty else (w > 1e-3).all()


def test_the_posterior_must_have_p_bias_prior_not_d_obs(one_thread):
    """P_bias(k | x) built with the D_obs mixture's weights (the uncorrected posterior) is measurably not
    `exact_empirical`, while the corrected one matches it: with the true components directly, and through the
    estimator's fit (``correct_prior`` flipped) against the attainable closed form at σ where the posterior is
    soft."""
    ds = Toy2D(n_bias=2000)
    split = ds.split(0.5, 0)
    q = _props(split.ref_labels, 8)
    obs_w = _props(torch.cat([split.ref_labels, split.bias_labels]), 8)
    comps, p, x = ds.family_components(), ds.bias_mixture.weights, _points(split)
    want = ds.empirical_ratio(q)
    good = ls.label_shift_ratio(comps, p, q, obs_w, correct_prior=True)
    bad = ls.label_shift_ratio(comps, p, q, obs_w, correct_prior=False)
    _assert_same(good, want, x)
    assert (bad.logit(x, 1.0) - want.logit(x, 1.0)).abs().max() > 0.3
    errors = {}
    for corrected in (True, False):
        est = RATIOS.get("label_shift")(ds, RatioConfig(), True)
        est.correct_prior = corrected
        model, _ = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
        errors[corrected] = float(sum((model.logit(x, s) - want.logit(x, s)).pow(2).mean() for s in (0.3, 1.0, 5.0)))
    assert errors[False] > 10 * errors[True], errors


def test_class_posterior_with_the_exact_posterior_is_exact_empirical(monkeypatch, one_thread):
    """class_posterior's fit with the exact noise-conditional posterior (the truth's components) and the true
    p_bias proportions is `exact_empirical`'s w_σ and ∇ log w_σ to 1e-6; its own fit (one Gaussian per class on
    D_bias) is near the closed form with D_bias's label shares in place of the true ones."""
    ds = GMM(dim=6, rank=2, modes=4, n_bias=3000)
    split = ds.split(0.1, 0)
    q = _props(split.ref_labels, 4)
    cls = RATIOS.get("class_posterior")
    assert cls.ceiling and cls.learned
    est = cls(ds, RatioConfig(), True)
    est.split = split
    model, info = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
    p_emp = _props(split.bias_labels, 4)
    near = ExactRatio(ds.data_mixture.with_weights(q), ds.data_mixture.with_weights(p_emp))
    x = _points(split)
    for s in (0.0, 0.3, 3.0):
        assert (model.logit(x, s) - near.logit(x, s)).abs().mean() < 0.05
    assert info["purity"] > 0.99 and info["prior_ratio_error"] < 0.05 and info["q_hat"] == q.tolist()
    monkeypatch.setattr(cls, "class_components", lambda self, bias, labels: ds.family_components())
    monkeypatch.setattr(cls, "class_priors", lambda self, labels: ds.bias_mixture.weights)
    for td in (True, False):
        est = cls(ds, RatioConfig(), td)
        est.split = split
        model, _ = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
        _assert_same(model, ds.empirical_ratio(q, td), x)


def test_class_posterior_needs_the_labels():
    from tiwbench.data.base import DataError

    ds = Toy2D()
    split = ds.split(0.05, 0)
    with pytest.raises(DataError, match="class labels"):
        RATIOS.get("class_posterior")(ds, RatioConfig(), True).fit(split.bias, split.ref, torch.Generator())


def test_the_image_path_is_the_classifier_posterior_reweighted(one_thread):
    """digits_lt at a smoke budget: both estimators return w_σ = Σ_k (q̂_k/p̂_k) softmax_k(classifier(x, σ)) with
    its autograd gradient, from a classifier on the shared observed-data denoiser's trunk."""
    from tiwbench.data.digits import DigitsLT

    ds = DigitsLT()
    split = ds.split(0.25, 0)
    cfg = RatioConfig(steps=8, batch_size=16, hidden=32, channels=8)
    shared = {}
    x = split.bias[:16]
    sigma = torch.linspace(0.01, 3.0, 16)
    for name in ("label_shift", "class_posterior"):
        est = RATIOS.get(name)(ds, cfg, True)
        est.split, est.shared, est.shared_seed = split, shared, 0
        model, info = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
        assert {"K", "p_hat", "q_hat", "purity", "prior_ratio_error"} <= set(info)
        log_ratio = torch.tensor(info["q_hat"]).double().log() - torch.tensor(info["p_hat"]).double().log()
        clf = model.log_posterior
        xr = x.clone().requires_grad_(True)
        by_hand = torch.logsumexp(clf(xr, sigma) + log_ratio, 1)
        (g_hand,) = torch.autograd.grad(by_hand.sum(), xr)
        log_w, grad = model.log_ratio_and_grad(x, sigma)
        inside = by_hand.abs() <= cfg.logit_max
        torch.testing.assert_close(log_w.double(), by_hand.detach().clamp(-cfg.logit_max, cfg.logit_max).float()
                                   .double(), rtol=0, atol=1e-5)
        torch.testing.assert_close(grad[inside], g_hand[inside].float(), rtol=1e-4, atol=1e-6)
    assert len(shared) == 1  # one observed-data denoiser for both


SUITE = """name: label_shift_smoke
datasets: [toy2d]
dataset_params: {toy2d: {n_bias: 600, n_oracle: 300}}
methods: [tiw_dsm@label_shift, iw_dsm@label_shift, tiw_dsm@class_posterior]
ref_fracs: [0.2]
seeds: [0]
metrics: [fd, bias]
profiles:
  default:
    toy2d:
      train: {steps: 20, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 5}
      ratio: {steps: 20, batch_size: 32, hidden: 32, depth: 2}
      sample: {n: 120, steps: 6, batch_size: 120}
"""


def test_listed_and_runnable_in_a_sweep(tmp_path, one_thread):
    """Both are registered with a one-line description; a tiny suite runs tiw_dsm and iw_dsm with label_shift and
    tiw_dsm with class_posterior; each record keeps K, p̂, q̂, α and purity, and class_posterior's cells are
    reference rows (ceilings) while label_shift's are not."""
    from tiwbench.sweep.runner import expand, run_cells

    for name in ("label_shift", "class_posterior"):
        assert name in RATIOS.names() and RATIOS.get(name).description
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    summary = run_cells(expand(load_suite(str(path))), tmp_path / "runs")
    assert not summary["failed"] and len(summary["ok"]) == 3, summary
    for rec_path in summary["ok"]:
        rec = json.loads(open(rec_path).read())
        provider = rec["method"].partition("@")[2]
        kind = "time" if rec["method"].startswith("tiw") else "clean"
        info = rec["ratio"][f"{kind}@{provider}"]
        assert info["provider"] == provider
        assert {"K", "p_hat", "q_hat", "purity", "prior_ratio_error"} <= set(info)
        assert len(info["p_hat"]) == len(info["q_hat"]) == info["K"] and math.isfinite(info["purity"])
        assert ("alpha" in info) == (provider == "label_shift")
        assert record_is_ceiling(rec) == (provider == "class_posterior")


def test_the_hybrid_starts_from_label_shift_and_learns_only_a_residual(one_thread):
    """label_shift_disc's logit is the frozen label_shift log w plus a residual: without the residual's output
    the two agree at every σ; training gives the residual something to say."""
    from tiwbench.config import RatioConfig
    from tiwbench.ratios.label_shift import BasedRatio

    ds = Toy2D(n_bias=1000)
    split = ds.split(0.1, 0)
    cfg = RatioConfig(steps=30, batch_size=64, hidden=16, depth=2)
    base = ls.label_shift_ratio(ds.family_components(), ds.bias_mixture.weights,
                                torch.bincount(split.ref_labels, minlength=8).double() / len(split.ref_labels))
    est = RATIOS.get("label_shift_disc")(ds, cfg, True)
    est.base_fit = lambda name: (base, {"K": 8}, None)
    model, info = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
    assert isinstance(model, BasedRatio) and model.base is base and info["base"] == {"estimator": "label_shift",
                                                                                     "K": 8}
    x = split.bias[:64]
    for sigma in (0.0, 0.3, 5.0):
        full = model.logit(x, sigma) - model.net(*_net_inputs(model, x, sigma)).reshape(-1)  # minus the residual
        assert torch.allclose(full, base.logit(x, sigma), atol=1e-5)
    lw, g = model.log_ratio_and_grad(x, torch.full((64,), 0.5))
    lb, gb = base.log_ratio_and_grad(x, torch.full((64,), 0.5))
    assert not torch.allclose(lw, lb)  # the residual trained to something
    assert g.shape == gb.shape and torch.isfinite(g).all()


def _net_inputs(model, x, sigma):
    """What LearnedRatio feeds its net (EDM's c_in · x and c_noise), for the residual alone."""
    s = torch.full((len(x),), float(sigma))
    c_in = 1 / (s**2 + model.sigma_data**2).sqrt()
    return c_in.unsqueeze(1) * x, s.clamp_min(1e-4).log() / 4
