"""Ratio estimators: the registry and its entry points, each estimator against the closed form on
toy2d, the denoiser-difference identity, and the runner's per-(estimator, kind) sharing."""

import sys

import pytest
import torch
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.config import ConfigError, RatioConfig
from tiwbench.data.mixtures import Toy2D
from tiwbench.diffusion.mlp import MLP
from tiwbench.ratios.diagnostics import ratio_diagnostics
from tiwbench.ratios.discriminator import LearnedRatio, RatioTrainConfig, train_ratio
from tiwbench.ratios.estimators import DenoiserDifferenceRatio, Discriminator, RatioEstimator
from tiwbench.registry import RATIOS

BUILTIN = {"exact", "exact_empirical", "fitted_family", "label_shift", "class_posterior", "label_shift_disc",
           "discriminator", "discriminator_precond", "discriminator_smooth", "denoiser_diff", "dlsm", "trunk",
           "dlsm_trunk",
           "discriminator_ensemble", "discriminator_gated", "dlsm_gated", "trunk_gated", "dlsm_trunk_gated"}


def test_ls_ratios_lists_builtins_and_the_old_name_still_works():
    r = CliRunner().invoke(app, ["ls", "ratios"])
    assert r.exit_code == 0
    assert {line.split()[0] for line in r.output.strip().splitlines()} == BUILTIN
    assert RATIOS.get("learned") is Discriminator  # suites and records written before the registry


PLUGIN = '''
from tiwbench.ratios.estimators import RatioEstimator

class HalfExact(RatioEstimator):
    name = "half_exact"
    description = "a third party's estimator: the exact ratio, flattened as w^(1/2)"
    learned = False

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        exact = self.dataset.exact_ratio(self.time_dependent)

        class Half:
            time_dependent, logit_max, clipped, seen, clip_rate = exact.time_dependent, exact.logit_max, 0, 0, 0.0

            def logit(self, x, sigma):
                return exact.logit(x, sigma) / 2

            def log_ratio(self, x, sigma, count=None):
                return exact.log_ratio(x, sigma, count) / 2

            def log_ratio_and_grad(self, x, sigma, count=None):
                l, g = exact.log_ratio_and_grad(x, sigma, count)
                return l / 2, g / 2

        return Half(), {"flattening": 0.5}
'''


def test_third_party_estimator_arrives_through_an_entry_point(install_plugin, monkeypatch):
    install_plugin(RATIOS, "tiwbench.ratios", "half_ratio_plugin", PLUGIN, "half_exact = half_ratio_plugin:HalfExact")
    assert "half_exact" in RATIOS.names()
    assert RATIOS.origin("half_exact") == "entry point half_ratio_plugin:HalfExact"
    assert issubclass(RATIOS.get("half_exact"), RatioEstimator)
    r = CliRunner().invoke(app, ["ls", "ratios"])
    assert any(line.startswith("half_exact ") and "entry point" in line for line in r.output.splitlines())
    # and the runner uses it by name, as `tiw_dsm@half_exact` in a suite would
    group = _group(monkeypatch, provider="discriminator")
    model = group.ratio("time", "half_exact")
    x, s = torch.randn(5, 2), torch.full((5,), 0.7)
    want = group.dataset.exact_ratio().logit(x.double(), s.double()) / 2
    assert torch.allclose(model.log_ratio(x, s).double(), want, atol=1e-6)
    assert group.ratio_info["time@half_exact"] == {**group.ratio_info["time@half_exact"], "provider": "half_exact",
                                                   "flattening": 0.5}
    sys.modules.pop("half_ratio_plugin", None)


class _Quiet:
    def phase(self, name, total):
        return None


def _group(monkeypatch, provider="discriminator", ref_frac=0.25, steps=5):
    from tiwbench.config import Budget
    from tiwbench.sweep.runner import Cell, Group

    budget = Budget()
    budget.ratio = RatioConfig(provider=provider, steps=steps, hidden=16, depth=2, batch_size=32)
    cell = Cell("t", "toy2d", "tiw_dsm", ref_frac, 0, "default", budget, ["bias"], {"n_bias": 400})
    return Group(cell, "cpu", None, _Quiet())


def test_runner_fits_each_estimator_once_per_group_and_kind(monkeypatch):
    g = _group(monkeypatch, provider="learned")
    a = g.ratio("time")
    assert g.ratio("time", "discriminator") is a and g.ratio("time", "learned") is a  # the default, shared
    e = g.ratio("time", "exact")
    assert e is not a and g.ratio("time", "exact") is e
    c = g.ratio("clean")
    assert c is not a and not c.time_dependent
    assert set(g.ratio_info) == {"time", "time@exact", "clean"}
    assert g.ratio_info["time"]["provider"] == "discriminator" and "per_sigma" in g.ratio_info["time"]
    assert "per_sigma" not in g.ratio_info["time@exact"]  # nothing estimated, nothing to diagnose


def test_weight_from_one_estimator_correction_from_another(monkeypatch):
    """``tiw_dsm@A+B``: log w from A, ∇log w from B, each model fitted once and recorded under its own key."""
    from tiwbench.sweep.runner import check_method_name

    g = _group(monkeypatch, provider="discriminator")
    mixed, reverse = g.ratio("time", "exact+discriminator"), g.ratio("time", "discriminator+exact")
    exact, disc = g.ratio("time", "exact"), g.ratio("time", "discriminator")
    x, s = torch.randn(6, 2), torch.full((6,), 0.4)
    for model, w_from, c_from in ((mixed, exact, disc), (reverse, disc, exact)):
        log_w, grad = model.log_ratio_and_grad(x, s)
        assert torch.equal(log_w, w_from.log_ratio(x, s)) and torch.equal(grad, c_from.log_ratio_and_grad(x, s)[1])
    assert set(g.ratio_info) == {"time", "time@exact"}
    mixed.clipped, mixed.seen = mixed.clipped * 0, mixed.seen * 0  # the runner's per-cell reset reaches the weight's
    assert exact.seen == 0
    check_method_name("tiw_dsm@exact+dlsm~vp")
    with pytest.raises(Exception, match="two as weight"):
        check_method_name("tiw_dsm@exact+dlsm+discriminator")


def test_ratio_models_under_a_kernel_are_their_own(monkeypatch):
    """Under vp the discriminator trains at vp's noise levels with vp's input scaling, keyed apart."""
    g = _group(monkeypatch, provider="discriminator")
    edm, vp = g.ratio("time"), g.ratio("time", None, "vp")
    assert vp is not edm and vp.kernel.name == "vp" and edm.kernel is None
    assert g.ratio_info["time~vp"]["kernel"] == "vp" and "kernel" not in g.ratio_info["time"]
    assert g.ratio("clean", None, "vp") is g.ratio("clean")  # a clean classifier sees no noise


def test_method_at_ratio_names_a_cell_of_its_own():
    from tiwbench.config import load_suite
    from tiwbench.sweep.runner import check_method_name, expand, method_and_ratio

    cells = expand(load_suite("ratio_study"), "smoke")
    names = {c.method for c in cells}
    assert {"iw_dsm", "tiw_dsm", "tiw_dsm@denoiser_diff", "tiw_dsm@exact"} <= names
    assert method_and_ratio("tiw_dsm@denoiser_diff") == ("tiw_dsm", "denoiser_diff")
    assert method_and_ratio("tiw_dsm") == ("tiw_dsm", None)
    cfg = next(c for c in cells if c.method == "tiw_dsm@exact").config()
    assert cfg["method"] == "tiw_dsm@exact"  # the estimator is in the hashed, saved config
    with pytest.raises(ConfigError, match="uses no density ratio"):
        check_method_name("dsm_obs@exact")


# -- against the closed form ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_split():
    ds = Toy2D(n_bias=1000)
    return ds, ds.split(0.5, 0)  # 500 reference points


_FITS: dict = {}


def _fit(name, ds, split, steps=300):
    """Diagnostics of ``name`` fitted on the split and of the exact ratio on the same draws (memoised:
    several tests read one fit)."""
    if (name, steps) not in _FITS:
        _FITS[name, steps] = _fit_once(name, ds, split, steps)
    return _FITS[name, steps]


def _fit_once(name, ds, split, steps):
    torch.manual_seed(0)
    cfg = RatioConfig(steps=steps, hidden=64, depth=2, batch_size=128, lr=2e-3)
    model, info = RATIOS.get(name)(ds, cfg, True).fit(split.bias, split.ref, torch.Generator().manual_seed(1))
    exact = ds.exact_ratio(True)
    rows = ratio_diagnostics(model, split.bias, split.ref, torch.Generator().manual_seed(2), exact=exact, n=1500)
    bayes = ratio_diagnostics(exact, split.bias, split.ref, torch.Generator().manual_seed(2), exact=exact, n=1500)
    return {r["sigma_lo"]: r for r in rows}, {r["sigma_lo"]: r for r in bayes}


@pytest.mark.parametrize("name", ["discriminator", "discriminator_precond", "discriminator_smooth", "denoiser_diff"])
def test_learned_estimators_approach_the_closed_form(name, toy_split):
    """Accuracy near the exact ratio's (the Bayes classifier's, on the same draws) and log w within a
    fraction of its own size where the two classes are distinguishable."""
    rows, bayes = _fit(name, *toy_split)
    for lo in (0.002, 0.05, 0.2):
        assert rows[lo]["accuracy"] >= bayes[lo]["accuracy"] - 0.04, (lo, rows[lo], bayes[lo])
        assert rows[lo]["log_ratio_mse"] < 0.35 * rows[lo]["log_ratio_norm"], (lo, rows[lo])
    assert bayes[0.2]["shift_mse"] < 1e-9 * bayes[0.2]["shift_norm"]  # the reference agrees with itself


def test_denoiser_difference_corrects_where_the_discriminator_slope_is_noise(toy_split):
    """The diagnosed weakness: σ²∇ℓ of a discriminator is noise for σ ≥ 1 (relative error ~1 and beyond);
    the denoiser difference stays a fraction of the signal there."""
    rows, _ = _fit("denoiser_diff", *toy_split)
    disc, _ = _fit("discriminator", *toy_split)
    for lo in (1.0, 5.0):
        assert rows[lo]["shift_mse"] < 0.3 * rows[lo]["shift_norm"], rows[lo]
        assert rows[lo]["shift_mse"] < disc[lo]["shift_mse"], (rows[lo], disc[lo])


class _Exactly(torch.nn.Module):
    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x, sigma):
        return self.mixture.denoiser(x.double(), sigma.double()).to(x.dtype)


def test_denoiser_difference_is_the_score_difference_for_exact_denoisers(toy):
    """σ²∇log w_σ = E_data[y|x] − E_bias[y|x]: with the closed-form denoisers in place, the model's
    gradient is the closed-form ∇log w_σ, at small and large σ."""
    disc = LearnedRatio(MLP(2, out_dim=1, hidden=8, depth=1), toy.sigma_data)
    model = DenoiserDifferenceRatio(disc, torch.nn.Linear(3, 2))
    model.d_ref, model.d_bias = _Exactly(toy.data_mixture), _Exactly(toy.bias_mixture)
    exact = toy.exact_ratio(True)
    g = torch.Generator().manual_seed(0)
    x = toy.bias_mixture.sample(200, g)[0]
    for s in (0.05, 0.5, 3.0, 40.0):
        sigma = torch.full((200,), s, dtype=torch.float64)
        xs = x + s * torch.randn(x.shape, generator=g, dtype=torch.float64)
        _, grad = model.log_ratio_and_grad(xs.float(), sigma.float())
        _, want = exact.log_ratio_and_grad(xs, sigma)
        rel = ((grad.double() - want) * s**2).norm() / (want * s**2).norm()
        assert rel < 1e-4, (s, float(rel))


def test_regulariser_enters_the_discriminator_objective(toy):
    """A strong penalty on the logit's size pulls it to zero; without it the logit separates the classes."""
    split = toy.split(0.5, 0)
    cfg = RatioTrainConfig(steps=150, batch_size=64, lr=3e-3)
    logits = {}
    for name in ("plain", "penalised"):
        torch.manual_seed(0)
        model = LearnedRatio(MLP(2, out_dim=1, hidden=32, depth=2), toy.sigma_data)
        reg = (lambda x, s, y, m=model: 100 * m.logit(x, s).pow(2).mean()) if name == "penalised" else None
        train_ratio(model, split.bias, split.ref, cfg, torch.Generator().manual_seed(0), regulariser=reg)
        with torch.no_grad():
            logits[name] = model.logit(split.bias[:500], torch.full((500,), 0.05)).std().item()
    assert logits["penalised"] < 0.1 * logits["plain"], logits


def test_smooth_penalty_shrinks_the_correction_at_high_noise(toy_split):
    """discriminator_smooth = discriminator_precond + γ·E‖σ²∇ℓ‖²/σ_data²: same seeds, smaller correction."""
    ds, split = toy_split
    g = torch.Generator().manual_seed(3)
    x = split.bias[:800] + 10.0 * torch.randn(800, 2, generator=g)
    sig = torch.full((800,), 10.0)
    norms = {}
    for name in ("discriminator_smooth", "discriminator_precond"):
        torch.manual_seed(0)
        cfg = RatioConfig(steps=200, hidden=64, depth=2, batch_size=128, lr=2e-3)
        model, _ = RATIOS.get(name)(ds, cfg, True).fit(split.bias, split.ref, torch.Generator().manual_seed(1))
        _, grad = model.log_ratio_and_grad(x, sig)
        norms[name] = float((sig[:, None] ** 2 * grad).pow(2).sum(1).mean())
    assert norms["discriminator_smooth"] < norms["discriminator_precond"], norms


def test_labelled_denoiser_on_images_sees_the_class_as_a_plane():
    """Images: the class is one more constant input plane; the output keeps the image's channels, and
    the two classes give different outputs from one shared network."""
    from tiwbench.diffusion.unet import UNet
    from tiwbench.ratios.estimators import _Labelled

    torch.manual_seed(0)
    net = UNet(in_channels=2, resolution=8, channels=8)
    for p in net.out.parameters():  # zero-initialised output: give it weights so the classes can differ
        torch.nn.init.normal_(p, std=0.1)
    x, c = torch.randn(3, 1, 8, 8), torch.zeros(3)
    ref, bias = _Labelled(net, 1.0)(x, c), _Labelled(net, 0.0)(x, c)
    assert ref.shape == x.shape and not torch.allclose(ref, bias)
    plane = torch.cat([x, torch.ones_like(x)], dim=1)
    assert torch.equal(ref, net(plane, c)[:, :1])


def test_sampling_time_method_takes_its_estimator_from_the_name(tmp_path):
    """`dg_obs@exact` guides with the closed-form ratio even when the suite's default is learned, and
    shares `dg_obs`'s trained network (the same dsm_obs training): only the guidance differs."""
    import json

    from tiwbench.config import load_suite
    from tiwbench.sweep.runner import check_method_name, expand, run_cells

    check_method_name("dg_obs@exact")  # a sampling-time ratio is a ratio
    cells = expand(load_suite("ref_size"), "smoke", datasets=["toy2d"], methods=["dsm_obs", "dg_obs", "dg_obs@exact"],
                   ref_fracs=[0.25], seeds=[0])
    summary = run_cells(cells, tmp_path)
    assert not summary["failed"] and len(summary["ok"]) == 3
    recs = {r["method"]: r for r in (json.loads(open(p).read()) for p in summary["ok"])}
    assert recs["dg_obs"]["train"]["sampling"]["provider"] == "learned"
    assert recs["dg_obs@exact"]["train"]["sampling"]["provider"] == "exact"
    assert recs["dg_obs@exact"]["train"]["final_loss"] == recs["dg_obs"]["train"]["final_loss"]
    bias = {m: next(x["value"] for x in r["metrics"] if x["name"] == "bias") for m, r in recs.items()}
    assert bias["dg_obs@exact"] != bias["dg_obs"]
