"""tiw_dsm_release against the released code's formula, evaluated by its literal broadcast."""

import torch

from tiwbench.diffusion.losses import Batch
from tiwbench.registry import METHODS


class LinearLogitRatio:
    """ℓ(x, σ) = a·x/(1 + σ) + b: a stand-in discriminator with a closed-form gradient."""

    def __init__(self, a: torch.Tensor, b: float):
        self.a, self.b, self.logit_max = a, b, 1e9

    def log_ratio_and_grad(self, x, sigma):
        scale = 1 / (1 + sigma.reshape(-1, *([1] * (x.ndim - 1))))
        logit = (self.a * x * scale).flatten(1).sum(1) + self.b
        return logit, (self.a * scale).expand_as(x)


def test_release_loss_equals_the_literal_broadcast():
    g = torch.Generator().manual_seed(0)
    B, shape = 6, (1, 4, 4)
    y = torch.rand(B, *shape, generator=g, dtype=torch.float64) * 2 - 1
    batch = Batch.draw(y, torch.arange(B) % 3 == 0, g)
    batch.sigma = batch.sigma.double()
    ratio = LinearLogitRatio(torch.randn(shape, generator=g, dtype=torch.float64) * 0.3, 0.2)
    sigma_data = 0.5

    def net(x, s):  # any fixed denoiser
        return torch.tanh(x) * 0.8

    net.sigma_data = sigma_data
    loss = METHODS.get("tiw_dsm_release")().loss(net, batch, ratio)

    # The released TIW_EDMLoss, step by step (loss.py:84-107), in this test's own words.
    sigma = batch.sigma.reshape(-1, 1, 1, 1)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    x = (y + sigma * batch.noise).requires_grad_(True)
    d = torch.sigmoid((ratio.a * x / (1 + sigma)).flatten(1).sum(1) + ratio.b)  # differentiated by autograd here
    (grad_d,) = torch.autograd.grad(d.sum(), x)
    prediction = d.detach().reshape(-1, 1, 1, 1)  # [B,1,1,1], as the release reshapes it
    tiw = 2 * prediction
    target = y - sigma**2 * grad_d  # y += correction, correction = −σ²∇ₓd
    err = (net(x.detach(), batch.sigma) - target) ** 2
    literal = weight * tiw[:, None, None, None] * err  # indexed again: broadcasts
    assert literal.shape == (B, 1, 1, B, *shape)
    assert torch.allclose(loss.sum(), literal.sum(), rtol=1e-9)
    # per element: the broadcast summed over the first (weight) axis
    assert torch.allclose(loss, literal.sum(dim=(0, 1, 2)), rtol=1e-9)
    # which is one scalar Σ_i 2 d_i on plain λ‖D − y'‖²: per-sample weights lost
    assert torch.allclose(loss, tiw.sum() * weight * err, rtol=1e-9)


def test_release_differs_from_tiw_dsm_with_the_exact_ratio(toy, exact_denoiser):
    """Not a relabelling of tiw_dsm: at the exact unbiased denoiser the release's target is off."""
    g = torch.Generator().manual_seed(1)
    y, _ = toy.bias_mixture.sample(2000, g)
    batch = Batch.draw(y, torch.zeros(len(y), dtype=torch.bool), g)
    ratio = toy.exact_ratio()
    net = exact_denoiser(lambda x, s: toy.data_mixture.denoiser(x, s))
    net.sigma_data = toy.sigma_data
    rel = METHODS.get("tiw_dsm_release")().loss(net, batch, ratio)
    tiw = METHODS.get("tiw_dsm")().loss(net, batch, ratio)
    assert not torch.allclose(rel / rel.sum(), tiw / tiw.sum(), atol=1e-3)
