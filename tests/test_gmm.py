"""The closed forms of `gmm` (METHOD.md §5a) against numerical references: dense multivariate normals,
autograd, Monte-Carlo Tweedie, quadrature of the tilted convolution, sample moments."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from tiwbench.data.gmm import GMM, GMMTilt, LowRankMixture, gmm_geometry
from tiwbench.data.mixtures import long_tail_weights


def small_mixture(dim=5, modes=3, rank=2, weights=(0.5, 0.3, 0.2)):
    means, factors, u = gmm_geometry(dim, modes, rank, scale=1.5, spread=0.6, seed=3)
    return LowRankMixture(means, factors, 0.2, torch.tensor(weights)), u


def dense_log_prob(mix: LowRankMixture, x, sigma):
    """Σ_k π_k N(x; μ_k, Σ_k + σ²I) with full covariance matrices: the second implementation."""
    cov = mix.component_cov() + sigma**2 * torch.eye(mix.dim, dtype=torch.float64)
    comps = torch.stack([MultivariateNormal(mix.means[k], cov[k]).log_prob(x) for k in range(len(mix.means))], 1)
    return torch.logsumexp(mix.weights.log() + comps, 1)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 2.0])
def test_density_and_score_against_dense_and_autograd(sigma):
    mix, _ = small_mixture()
    x = torch.randn(64, mix.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    torch.testing.assert_close(mix.log_prob(x, sigma), dense_log_prob(mix, x, sigma), rtol=1e-10, atol=1e-10)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dense_log_prob(mix, xg, sigma).sum(), xg)
    torch.testing.assert_close(mix.score(x, sigma), grad, rtol=1e-8, atol=1e-8)


def test_denoiser_is_the_posterior_mean():
    """Dense E[y|x] = Σ_k r_k (μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k)), and Monte Carlo: the residual y − D(x)
    is uncorrelated with (1, x) over joint draws (y ~ p, x = y + σn)."""
    mix, _ = small_mixture(dim=3)
    sigma = 0.7
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, mix.dim, dtype=torch.float64, generator=g)
    cov = mix.component_cov()
    eye = torch.eye(mix.dim, dtype=torch.float64)
    r = mix.posterior(x, sigma)
    dense = sum(r[:, k:k + 1] * (mix.means[k] + (x - mix.means[k]) @ torch.linalg.solve(cov[k] + sigma**2 * eye,
                                                                                           cov[k]))
                for k in range(len(mix.means)))
    torch.testing.assert_close(mix.denoiser(x, sigma), dense, rtol=1e-9, atol=1e-9)

    y, _ = mix.sample(200_000, g)
    xn = y + sigma * torch.randn(y.shape, dtype=torch.float64, generator=g)
    resid = y - mix.denoiser(xn, sigma)
    feats = torch.cat([torch.ones(len(xn), 1, dtype=torch.float64), xn], 1)
    corr = feats.T @ resid / len(xn)  # E[(1, x)ᵀ (y − D(x))] = 0 for the true posterior mean
    se = (feats[:, :, None] * resid[:, None, :]).std(0) / math.sqrt(len(xn))
    assert (corr.abs() < 5 * se).all(), (corr, se)
    # and a wrong denoiser (a 10 % shrink) is caught by the same test
    wrong = y - 0.9 * mix.denoiser(xn, sigma)
    assert ((feats.T @ wrong / len(xn)).abs() > 5 * se).any()


def test_tilt_is_the_exponential_tilt():
    """log p_bias − log p − β uᵀx is constant at σ = 0; at σ > 0 the tilted p_σ equals the quadrature of
    ∫ p(y) e^{β uᵀy} N(x; y, σ²I) dy / Z on a 2-D grid."""
    mix, u = small_mixture(dim=2, rank=1)
    beta = 0.8
    tilted = mix.tilted(beta, u)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gap = tilted.log_prob(x) - mix.log_prob(x) - beta * (x @ u)
    assert float(gap.max() - gap.min()) < 1e-10

    sigma = 0.5
    grid = torch.linspace(-6, 6, 601, dtype=torch.float64)
    h = float(grid[1] - grid[0])
    yy = torch.cartesian_prod(grid, grid)
    base = (dense_log_prob(mix, yy, 0.0) + beta * (yy @ u)).exp()  # p(y) e^{β uᵀy}
    z = base.sum() * h * h
    pts = x[:8]
    kern = (-0.5 * torch.cdist(pts, yy) ** 2 / sigma**2).exp() / (2 * math.pi * sigma**2)
    numeric = (kern * base).sum(1) * h * h / z
    torch.testing.assert_close(tilted.log_prob(pts, sigma).exp(), numeric, rtol=1e-6, atol=1e-9)


def test_tilt_within_tilts_every_component_on_its_own():
    """Component by component (dense normals), log Ñ_k(x) − log N_k(x) − bᵀx is a constant of k alone,
    and the weights are untouched: the tilt inside each mode moves no mass between modes."""
    mix, u = small_mixture()
    b = 0.8 * u
    inside = mix.tilted_within(b)
    torch.testing.assert_close(inside.weights, mix.weights, rtol=0, atol=0)
    x = torch.randn(50, mix.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    cov = mix.component_cov()
    for k in range(len(mix.means)):
        gap = (MultivariateNormal(inside.means[k], cov[k]).log_prob(x)
               - MultivariateNormal(mix.means[k], cov[k]).log_prob(x) - x @ b)
        assert float(gap.max() - gap.min()) < 1e-9, k


@pytest.mark.parametrize("dim", [4, 16])
def test_biased_mode_weights_are_the_stated_ones(dim):
    """gmm_tilt's D_bias keeps uniform mode weights (its only bias is the tilt), gmm with a tilt keeps its
    long-tailed ones; and D_bias's drawn mode counts follow them (a binomial 5-σ band per mode)."""
    tilt = GMMTilt(dim=dim)
    torch.testing.assert_close(tilt.bias_mixture.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    both = GMM(dim=dim, tilt=1.0)
    torch.testing.assert_close(both.bias_mixture.weights, long_tail_weights(8, 0.01))
    split = tilt.split(0.01, seed=0)
    n = len(split.bias_labels)
    counts = torch.bincount(split.bias_labels, minlength=8).double()
    assert ((counts - n / 8).abs() < 5 * math.sqrt(n / 8 * 7 / 8)).all(), counts


def test_ratio_is_the_density_quotient():
    ds = GMM(dim=6, rank=2, modes=4, tilt=0.7, rho=0.1)
    ratio = ds.exact_ratio()
    x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for sigma in (0.05, 0.5, 3.0):
        quotient = dense_log_prob(ds.data_mixture, x, sigma) - dense_log_prob(ds.bias_mixture, x, sigma)
        log_w, grad = ratio.log_ratio_and_grad(x, sigma)
        torch.testing.assert_close(log_w, quotient, rtol=1e-9, atol=1e-9)
        xg = x.clone().requires_grad_(True)
        q = dense_log_prob(ds.data_mixture, xg, sigma) - dense_log_prob(ds.bias_mixture, xg, sigma)
        (g,) = torch.autograd.grad(q.sum(), xg)
        torch.testing.assert_close(grad, g, rtol=1e-8, atol=1e-8)


def test_moments_and_split():
    mix, _ = small_mixture()
    y, _ = mix.sample(200_000, torch.Generator().manual_seed(5))
    torch.testing.assert_close(y.mean(0), mix.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(y.T), mix.cov(), atol=0.03, rtol=0)

    ds = GMM(dim=32, n_bias=2000, n_oracle=500)
    s = ds.split(0.05, seed=0)
    assert s.bias.shape == (2000, 32) and s.ref.shape == (100, 32) and s.oracle.shape == (500, 32)
    counts = torch.bincount(s.bias_labels, minlength=8)
    assert counts[0] > 10 * counts[-1]  # long-tailed: ρ = 0.01
    ev = ds.evaluator()
    assert ev.info["accuracy"] > 0.99  # the modes are separated: the posterior labels almost surely
    # the tilt metric reads 0 on the truth and β·sqrt(uᵀΣ_k u) on the tilted data
    tilt = GMM(dim=32, rho=1.0, tilt=1.0)
    ev = tilt.evaluator()
    truth, _ = tilt.data_mixture.sample(20000, torch.Generator().manual_seed(6))
    biased, _ = tilt.bias_mixture.sample(20000, torch.Generator().manual_seed(7))
    assert ev.tilt_shift(truth)[0] < 0.05
    u = tilt.tilt_direction
    sd = ((tilt.data_mixture.factors.transpose(1, 2) @ u) ** 2).sum(1).add(tilt.params["eps"] ** 2).sqrt()
    torch.testing.assert_close(torch.tensor(ev.tilt_shift(biased)[1], dtype=torch.float64), sd, atol=0.05, rtol=0)
