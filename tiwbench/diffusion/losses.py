"""Plain denoising score matching in EDM form (or a kernel's), returning per-element values.

Every method's loss is a delta on :func:`dsm_loss`: a per-sample weight and a shift of the
regression target (METHOD.md §4). The training loop reduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiwbench.diffusion.precond import expand_like

P_MEAN, P_STD = -1.2, 1.2  # EDM's training-noise distribution ln σ ~ N(P_mean, P_std²)


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_data²) / (σ σ_data)², which gives the network unit-variance targets."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def device_generator(generator: torch.Generator, device) -> torch.Generator:
    """``generator`` itself if it lives on ``device``'s kind, else one there seeded from it (one draw),
    so the same seed gives the same run on each kind of device and draws need no host copy."""
    if generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def sample_sigma(n: int, generator: torch.Generator | None = None, p_mean: float = P_MEAN,
                 p_std: float = P_STD, device: str | torch.device = "cpu") -> torch.Tensor:
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


@dataclass
class Batch:
    """One minibatch of clean data with its noise drawn, so that a loss is a pure function."""

    y: torch.Tensor  # clean samples [B, ...]
    is_ref: torch.Tensor  # bool [B]: from D_ref (weight 1, no correction) or from D_bias
    sigma: torch.Tensor  # [B]
    noise: torch.Tensor  # like y, standard normal
    bias_idx_: torch.Tensor | None = None  # indices of D_bias samples, found when first asked (a host sync on
    # a GPU); the training step never asks: methods use is_ref as a mask over the whole batch

    @property
    def bias_idx(self) -> torch.Tensor:
        if self.bias_idx_ is None:
            self.bias_idx_ = torch.nonzero(~self.is_ref).flatten()
        return self.bias_idx_

    @property
    def x(self) -> torch.Tensor:
        return self.y + expand_like(self.sigma, self.y) * self.noise

    @classmethod
    def draw(cls, y: torch.Tensor, is_ref: torch.Tensor, generator: torch.Generator | None = None,
             p_mean: float = P_MEAN, p_std: float = P_STD, kernel=None) -> Batch:
        """σ from ``kernel``'s training distribution (None: EDM's, with ``p_mean``, ``p_std``)."""
        if kernel is None:
            sigma = sample_sigma(len(y), generator, p_mean, p_std, device=y.device)
        else:
            sigma = kernel.sample_sigma(len(y), generator, device=y.device)
        noise = torch.randn(y.shape, generator=generator, device=y.device)
        return cls(y=y, is_ref=is_ref, sigma=sigma, noise=noise)

    def to(self, device) -> Batch:
        """Move to ``device``; the D_bias indices are found first, where is_ref lives (no sync)."""
        idx = self.bias_idx
        return Batch(self.y.to(device, non_blocking=True), self.is_ref.to(device, non_blocking=True),
                     self.sigma.to(device, non_blocking=True), self.noise.to(device, non_blocking=True),
                     idx.to(device, non_blocking=True))


def dsm_loss(net, batch: Batch, weight: torch.Tensor | None = None,
             target_shift: torch.Tensor | None = None) -> torch.Tensor:
    """λ(σ) · weight · ‖D(y + σn; σ) − (y + shift)‖², per element (shape of y)."""
    y, sigma = batch.y, batch.sigma
    denoised = net(batch.x, sigma)
    target = y if target_shift is None else y + target_shift
    kernel = getattr(net, "kernel", None)
    lam = edm_weight(sigma, net.sigma_data) if kernel is None else kernel.loss_weight(sigma, net.sigma_data)
    if weight is not None:
        lam = lam * weight
    return expand_like(lam, y) * (denoised - target) ** 2
