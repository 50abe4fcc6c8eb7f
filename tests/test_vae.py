"""The VAE methods' weighted ELBO (METHOD.md §9) on the exact toy2d mixtures: E_{p_bias}[w(y) ELBO(y)] =
E_{p_data}[ELBO(y)], checked against a second Monte Carlo drawn from p_data itself."""

from __future__ import annotations

import math

import pytest
import torch

from tiwbench.diffusion.losses import Batch
from tiwbench.registry import METHODS
from tiwbench.training.vae import VAEModel


def _batch(mixture, n, g, is_ref):
    y, _ = mixture.sample(n, g)
    return Batch(y=y, is_ref=torch.full((n,), is_ref), sigma=torch.ones(n, dtype=torch.float64),
                 noise=torch.randn(y.shape, generator=g, dtype=torch.float64))


def test_weighted_elbo_is_the_p_data_elbo_and_the_unweighted_one_is_not(toy, one_thread):
    torch.manual_seed(0)
    model = VAEModel(2, (2,), hidden=32, depth=2, sigma_data=toy.sigma_data).double()
    ratio = toy.exact_ratio(time_dependent=False)
    ratio.logit_max = 1e9
    g = torch.Generator().manual_seed(5)
    n = 200_000
    with torch.no_grad():
        target = METHODS.get("vae_ref")().loss(model, _batch(toy.data_mixture, n, g, True)).flatten()
        biased = _batch(toy.bias_mixture, n, g, False)
        weighted = METHODS.get("iw_vae")().loss(model, biased, ratio).flatten()
        plain = METHODS.get("vae_obs")().loss(model, biased).flatten()
    se = math.sqrt(float(weighted.var()) / n + float(target.var()) / n)
    assert abs(float(weighted.mean() - target.mean())) < 4 * se, (float(weighted.mean()), float(target.mean()), se)
    se_plain = math.sqrt(float(plain.var()) / n + float(target.var()) / n)
    assert abs(float(plain.mean() - target.mean())) > 10 * se_plain


def test_reference_rows_keep_weight_one(toy):
    torch.manual_seed(0)
    model = VAEModel(2, (2,), hidden=16, depth=2, sigma_data=toy.sigma_data).double()
    ratio = toy.exact_ratio(time_dependent=False)
    b = _batch(toy.bias_mixture, 64, torch.Generator().manual_seed(1), False)
    b.is_ref = torch.arange(64) % 2 == 0
    with torch.no_grad():
        w = METHODS.get("iw_vae")().loss(model, b, ratio).flatten()
        u = METHODS.get("vae_obs")().loss(model, b).flatten()
    assert torch.equal(w[b.is_ref], u[b.is_ref]) and not torch.allclose(w[~b.is_ref], u[~b.is_ref])


@pytest.mark.parametrize("name", ["vae_ref", "vae_obs", "iw_vae"])
def test_vae_methods_belong_to_the_vae_family(name):
    assert METHODS.get(name).family == "vae"
