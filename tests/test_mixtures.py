"""Closed forms of the Gaussian-mixture ground truth against autograd and Monte Carlo."""

import math

import pytest
import torch

from tiwbench.data.mixtures import GaussianMixture, Toy2D


def test_score_matches_autograd_of_log_prob(toy):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    for sigma in (0.0, 0.1, 1.0):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(toy.bias_mixture.log_prob(xr, sigma).sum(), xr)
        assert torch.allclose(toy.bias_mixture.score(x, sigma), grad, atol=1e-9)


def test_perturbed_density_integrates_to_one():
    mix = GaussianMixture([[0.0, 0.0], [1.0, 0.5]], [0.2, 0.4], [0.3, 0.7])
    grid = torch.linspace(-6, 7, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    h = float(grid[1] - grid[0])
    for sigma in (0.0, 0.5, 1.0):
        total = mix.log_prob(pts, sigma).exp().sum() * h * h
        assert abs(float(total) - 1) < 1e-3


def test_denoiser_is_conditional_mean(toy):
    """E[y | x] by Monte Carlo on a thin slab around x0 agrees with Tweedie's closed form."""
    g = torch.Generator().manual_seed(1)
    sigma = 0.3
    y, _ = toy.data_mixture.sample(400_000, g)
    x = y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
    x0 = torch.tensor([[0.9, 0.2]], dtype=torch.float64)
    near = (x - x0).norm(dim=1) < 0.04  # the slab's width biases the estimate by O(0.04²)
    mc = y[near].mean(0)
    se = y[near].std(0) / near.sum().sqrt()
    assert near.sum() > 300
    assert torch.all((mc - toy.data_mixture.denoiser(x0, sigma)[0]).abs() < 4 * se + 0.005)


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.3, 1.0, 5.0])
def test_expected_weight_under_bias_is_one(toy, sigma):
    """E_{x ~ p_σ^bias}[w_σ(x)] = ∫ p_σ^data = 1 for every σ (METHOD.md §4)."""
    g = torch.Generator().manual_seed(2)
    y, _ = toy.bias_mixture.sample(200_000, g)
    x = y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
    w = toy.exact_ratio(time_dependent=True).logit(x, sigma).double().exp()
    se = float(w.std() / math.sqrt(len(w)))
    assert abs(float(w.mean()) - 1) < 5 * se + 1e-3


def test_ratio_tends_to_one_with_noise(toy):
    g = torch.Generator().manual_seed(3)
    y, _ = toy.bias_mixture.sample(5000, g)
    ratio = toy.exact_ratio()
    spread = []
    for sigma in (0.01, 0.3, 3.0, 30.0):
        x = y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
        spread.append(float(ratio.logit(x, sigma).double().abs().mean()))
    assert spread == sorted(spread, reverse=True) and spread[-1] < 0.05


def test_grad_log_ratio_matches_autograd(toy):
    ratio = toy.exact_ratio()
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sigma = torch.full((32,), 0.2, dtype=torch.float64)
    _, grad = ratio.log_ratio_and_grad(x, sigma)
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(ratio.logit(xr, sigma).sum(), xr)
    assert torch.allclose(grad, ref, atol=1e-8)


def test_toy_split_deterministic_and_sized():
    ds = Toy2D(n_bias=1000)
    a, b = ds.split(0.05, seed=7), ds.split(0.05, seed=7)
    assert torch.equal(a.bias, b.bias) and torch.equal(a.ref, b.ref) and a.hashes == b.hashes
    assert len(a.ref) == 50 and len(a.bias) == 1000
    assert ds.split(0.05, seed=8).hashes["bias"] != a.hashes["bias"]


def test_biased_weights_long_tailed(toy):
    w = toy.bias_mixture.weights
    assert torch.all(w[:-1] > w[1:]) and abs(float(w[-1] / w[0]) - toy.params["rho"]) < 1e-12
