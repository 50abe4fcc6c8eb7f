"""dlsm (denoising likelihood score matching) against the closed form on exact mixtures.

The identity it trains on: E_c[y|x] = D_obs(x) + σ²∇ₓ log P(c|x) with P(ref|x) = sigmoid(ℓ + log π/(1−π))
(METHOD.md §3); the DLSM term is minimised by the exact logit; and the fitted model's log w and
σ²∇log w per σ band, against the closed form.
"""

import math

import pytest
import torch

from tiwbench.data.mixtures import Toy2D
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.ratios.estimators import class_denoiser, dlsm_term

PI = 0.2  # share of D_ref in D_obs


def _obs(toy, pi=PI):
    return toy.data_mixture.with_weights(pi * toy.data_mixture.weights + (1 - pi) * toy.bias_mixture.weights)


def _draw(toy, n, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    yr, _ = toy.data_mixture.sample(n, g)
    yb, _ = toy.bias_mixture.sample(n, g)
    y = torch.cat([yr, yb])
    sig = torch.full((2 * n,), sigma, dtype=torch.float64)
    x = y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
    is_ref = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return y, x, sig, is_ref


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_class_denoiser_is_each_class_posterior_mean(toy, sigma):
    """With the exact logit and the exact D_obs, D_c is E_data[y|x] on reference rows and E_bias[y|x] on
    biased ones; adding the balanced posterior instead (prior odds 0) is wrong when π ≠ ½."""
    obs, ratio = _obs(toy), toy.exact_ratio()
    _, x, sig, is_ref = _draw(toy, 300, sigma)
    want = torch.where(is_ref[:, None], toy.data_mixture.denoiser(x, sig), toy.bias_mixture.denoiser(x, sig))
    errs = {}
    for odds in (math.log(PI / (1 - PI)), 0.0):
        xg = x.clone().requires_grad_(True)
        logit = ratio.data.log_prob(xg, sig) - ratio.bias.log_prob(xg, sig)
        d_c = class_denoiser(logit, xg, sig, obs.denoiser(x, sig), is_ref, odds, create_graph=False)
        errs[odds] = float((d_c - want).norm() / (want - x).norm())
    assert errs[math.log(PI / (1 - PI))] < 1e-8, errs
    assert errs[0.0] > 1e-3, errs


class _Logit(torch.nn.Module):
    """A 'ratio model' whose logit is the exact one plus a·uᵀx/σ: a shift σ·a·u of its correction σ²∇ℓ."""

    def __init__(self, toy, a):
        super().__init__()
        self.ratio, self.a = toy.exact_ratio(), a
        self.u = torch.tensor([0.6, -0.8], dtype=torch.float64)

    def logit(self, x, sigma):
        exact = self.ratio.data.log_prob(x, sigma) - self.ratio.bias.log_prob(x, sigma)
        return exact + self.a * (x @ self.u) / sigma


class _Exactly(torch.nn.Module):
    def __init__(self, mixture, sigma_data):
        super().__init__()
        self.mixture, self.sigma_data, self.kernel = mixture, sigma_data, None

    def forward(self, x, sigma):
        return self.mixture.denoiser(x, sigma)


def test_dlsm_term_is_minimised_by_the_exact_logit(toy):
    """E[dlsm_term] at the exact logit is below its value at perturbed logits, beyond Monte-Carlo error
    (paired: the same draws)."""
    d_obs = _Exactly(_obs(toy), toy.sigma_data)
    odds = math.log(PI / (1 - PI))
    for sigma in (0.1, 1.0):
        y, x, sig, is_ref = _draw(toy, 20_000, sigma, seed=1)
        base = dlsm_term(_Logit(toy, 0.0), d_obs, x, sig, y, is_ref, odds).sum(1).detach()
        for a in (-0.5, 0.5):
            diff = (dlsm_term(_Logit(toy, a), d_obs, x, sig, y, is_ref, odds).sum(1) - base).detach()
            se = float(diff.std()) / math.sqrt(len(diff))
            assert float(diff.mean()) > 5 * se, (sigma, a, float(diff.mean()), se)


def test_dlsm_corrects_where_the_discriminator_slope_is_noise():
    """Fitted on toy2d (500 reference points): log w within a fraction of its size where the classes are
    distinguishable, and σ²∇log w within a fraction of its size for σ ≥ 0.2, where the plain
    discriminator's is noise (the same budget and seeds)."""
    from tiwbench.config import RatioConfig
    from tiwbench.ratios.diagnostics import ratio_diagnostics
    from tiwbench.registry import RATIOS

    torch.set_num_threads(1)
    ds = Toy2D(n_bias=1000)
    split = ds.split(0.5, 0)
    rows = {}
    for name in ("dlsm", "discriminator"):
        torch.manual_seed(0)
        cfg = RatioConfig(steps=300, hidden=64, depth=2, batch_size=128, lr=2e-3)
        model, _ = RATIOS.get(name)(ds, cfg, True).fit(split.bias, split.ref, torch.Generator().manual_seed(1))
        diag = ratio_diagnostics(model, split.bias, split.ref, torch.Generator().manual_seed(2),
                                 exact=ds.exact_ratio(True), n=1500)
        rows[name] = {r["sigma_lo"]: r for r in diag}
    dlsm, disc = rows["dlsm"], rows["discriminator"]
    for lo in (0.002, 0.05, 0.2):
        assert dlsm[lo]["log_ratio_mse"] < 0.5 * dlsm[lo]["log_ratio_norm"], (lo, dlsm[lo])
    for lo in (0.2, 1.0, 5.0):
        assert dlsm[lo]["shift_mse"] < 0.6 * dlsm[lo]["shift_norm"], (lo, dlsm[lo])
    for lo in (1.0, 5.0):
        assert dlsm[lo]["shift_mse"] < 0.5 * disc[lo]["shift_mse"], (lo, dlsm[lo], disc[lo])


def test_dlsm_records_its_observed_data_denoiser_and_prior_odds(toy):
    from tiwbench.config import RatioConfig
    from tiwbench.registry import RATIOS

    split = Toy2D(n_bias=200).split(0.25, 0)
    cfg = RatioConfig(steps=5, hidden=8, depth=1, batch_size=16)
    model, info = RATIOS.get("dlsm")(toy, cfg, True).fit(split.bias, split.ref, torch.Generator().manual_seed(0))
    assert info["log_prior_odds"] == pytest.approx(math.log(50 / 200))
    assert {"final_obs_dsm", "final_bce"} <= set(info)
    assert isinstance(model, torch.nn.Module) and not isinstance(model, EDMPrecond)


def test_dlsm_on_images_is_a_config_error_naming_the_alternatives():
    from tiwbench.config import ConfigError, RatioConfig
    from tiwbench.data.digits import DigitsLT
    from tiwbench.registry import RATIOS

    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ConfigError, match="vector data only.*'discriminator'"):
        RATIOS.get("dlsm")(DigitsLT(), RatioConfig(channels=16), True).fit(x, x, torch.Generator().manual_seed(0))
