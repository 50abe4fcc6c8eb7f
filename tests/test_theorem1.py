"""Theorem 1 on exact Gaussian mixtures, through the registered methods' own loss code.

With the exact ratio, L_tiw_dsm(D) − L_dsm_on_p_data(D) does not depend on the denoiser D; for the
reweighting-only ablation it does. Differences between denoisers are computed on shared samples
(paired), and compared with their Monte-Carlo standard error.
"""

import math

import torch

from tiwbench.diffusion.losses import Batch
from tiwbench.registry import METHODS


def _losses(method, denoiser, y, noise, sigma, ratio, is_ref_value):
    n = len(y)
    batch = Batch(y=y, is_ref=torch.full((n,), is_ref_value), sigma=torch.full((n,), sigma, dtype=y.dtype),
                  noise=noise)
    return method.loss(denoiser, batch, ratio).sum(dim=1)


def _gaps(method_name, toy, exact_denoiser, sigma, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    yb, _ = toy.bias_mixture.sample(n, g)
    nb = torch.randn(yb.shape, generator=g, dtype=torch.float64)
    yd, _ = toy.data_mixture.sample(n, g)
    nd = torch.randn(yd.shape, generator=g, dtype=torch.float64)
    ratio = toy.exact_ratio(time_dependent=True)
    ratio.logit_max = 1e9  # the theorem is about the exact ratio, unclipped
    method = METHODS.get(method_name)()
    plain = METHODS.get("dsm_obs")()
    dens = {
        "data": exact_denoiser(lambda x, s: toy.data_mixture.denoiser(x, s)),
        "bias": exact_denoiser(lambda x, s: toy.bias_mixture.denoiser(x, s)),
        "identity": exact_denoiser(lambda x, s: x),
        "shrink": exact_denoiser(lambda x, s: 0.5 * x + 0.1),
    }
    per = {}
    for name, d in dens.items():
        lt = _losses(method, d, yb, nb, sigma, ratio, False)  # D_bias samples: weight and correction
        ld = _losses(plain, d, yd, nd, sigma, None, True)  # plain DSM on p_data
        per[name] = (lt, ld)
    gaps = {}
    for name in dens:
        if name == "data":
            continue
        dt = per[name][0] - per["data"][0]  # paired differences share the samples' noise
        dd = per[name][1] - per["data"][1]
        gap = float(dt.mean() - dd.mean())
        se = math.sqrt(float(dt.var() / n + dd.var() / n))
        gaps[name] = (gap, se)
    return gaps


def test_tiw_dsm_differs_from_dsm_on_data_by_a_constant(toy, exact_denoiser):
    for sigma in (0.1, 0.5, 2.0):
        for name, (gap, se) in _gaps("tiw_dsm", toy, exact_denoiser, sigma).items():
            assert abs(gap) < 5 * se + 1e-3, (sigma, name, gap, se)


def test_reweighting_only_is_not_a_constant_shift(toy, exact_denoiser):
    gaps = _gaps("tiw_dsm_nocorr", toy, exact_denoiser, 0.5)
    assert any(abs(gap) > 10 * se for gap, se in gaps.values()), gaps


def test_unweighted_dsm_on_biased_data_is_not_a_constant_shift(toy, exact_denoiser):
    gaps = _gaps("dsm_obs", toy, exact_denoiser, 0.5)
    assert any(abs(gap) > 10 * se for gap, se in gaps.values()), gaps


def test_correction_only_is_not_a_constant_shift(toy, exact_denoiser):
    """tiw_dsm_noweight: Theorem 1's identity does not hold without the weight ..."""
    gaps = _gaps("tiw_dsm_noweight", toy, exact_denoiser, 0.5, n=50_000)
    assert any(abs(gap) > 10 * se for gap, se in gaps.values()), gaps


def _directional_derivatives(method_name, toy, exact_denoiser, sigma, n=30_000, seed=1, delta=0.05):
    """d/dε of the D_bias loss at D = D_data + ε h, for a few directions h (central differences are
    exact for a quadratic loss), on shared samples: mean and its standard error per direction."""
    g = torch.Generator().manual_seed(seed)
    yb, _ = toy.bias_mixture.sample(n, g)
    nb = torch.randn(yb.shape, generator=g, dtype=torch.float64)
    ratio = toy.exact_ratio(time_dependent=True)
    ratio.logit_max = 1e9
    method = METHODS.get(method_name)()
    directions = {
        "toward bias denoiser": lambda x, s: toy.bias_mixture.denoiser(x, s) - toy.data_mixture.denoiser(x, s),
        "x": lambda x, s: x,
        "constant": lambda x, s: torch.tensor([0.3, -0.2], dtype=x.dtype).expand_as(x),
    }
    out = {}
    for name, h in directions.items():
        plus = exact_denoiser(lambda x, s, h=h: toy.data_mixture.denoiser(x, s) + delta * h(x, s))
        minus = exact_denoiser(lambda x, s, h=h: toy.data_mixture.denoiser(x, s) - delta * h(x, s))
        diff = (_losses(method, plus, yb, nb, sigma, ratio, False)
                - _losses(method, minus, yb, nb, sigma, ratio, False)) / (2 * delta)
        out[name] = (float(diff.mean()), float(diff.std() / math.sqrt(n)))
    return out


def test_correction_only_is_minimised_by_the_unbiased_denoiser(toy, exact_denoiser):
    """... but its pointwise minimiser is E_data[y|x]: the gradient at the exact unbiased denoiser is
    zero within Monte-Carlo error in every direction, as for tiw_dsm; not so without the correction."""
    for sigma in (0.1, 0.5):
        for name in ("tiw_dsm_noweight",) if sigma == 0.1 else ("tiw_dsm_noweight", "tiw_dsm"):
            for direction, (mean, se) in _directional_derivatives(name, toy, exact_denoiser, sigma).items():
                assert abs(mean) < 5 * se + 1e-6, (name, sigma, direction, mean, se)
    nocorr = _directional_derivatives("tiw_dsm_nocorr", toy, exact_denoiser, 0.5)
    assert any(abs(mean) > 10 * se for mean, se in nocorr.values()), nocorr
