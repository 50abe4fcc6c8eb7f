"""Preconditioning D(x; σ) = c_skip x + c_out F(c_in x, c_noise): EDM's, or a kernel's (Karras et al. 2022,
Table 1; :mod:`tiwbench.diffusion.kernels`)."""

from __future__ import annotations

import torch
from torch import nn


def expand_like(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample σ of shape [B] reshaped to broadcast against x of shape [B, ...]."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class EDMPrecond(nn.Module):
    """Wraps a raw network ``F(x_in, c_noise)`` into the denoiser ``D(x̂; σ)`` of x̂ = y + σn, with
    EDM's coefficients, or ``kernel``'s (None: EDM's, computed as always)."""

    def __init__(self, model: nn.Module, sigma_data: float = 0.5, kernel=None):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)
        self.kernel = kernel  # also read by dsm_loss (λ) and the training loop (σ's distribution)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if self.kernel is not None:
            c_skip, c_out, c_in, c_noise = self.kernel.precond(sigma, self.sigma_data)
            c_skip, c_out, c_in = (expand_like(c, x) for c in (c_skip, c_out, c_in))
            return c_skip * x + c_out * self.model(c_in * x, c_noise)
        s = expand_like(sigma, x)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.model(c_in * x, c_noise)
