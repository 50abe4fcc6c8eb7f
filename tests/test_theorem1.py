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
