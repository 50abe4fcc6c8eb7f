"""Raw networks F(x_in, c_noise) for vector data; images live in :mod:`tiwbench.diffusion.unet`."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class FourierEmbedding(nn.Module):
    """Fixed sinusoidal embedding of a scalar (EDM's c_noise = ln σ / 4)."""

    def __init__(self, dim: int = 32, max_period: float = 100.0):
        super().__init__()
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2) / (dim // 2)) * max_period / 4
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([a.cos(), a.sin()], dim=1)


class MLP(nn.Module):
    """An MLP on x whose hidden layers are shifted by a learned map of embed(c_noise), for vector data
    and for the time-dependent discriminator.

    The embedding is added to every hidden layer's pre-activation (as EDM's blocks take theirs),
    not concatenated to the input: concatenated, its 32 features outweigh the 2 of a toy2d point,
    the hidden units start as functions of σ alone, and at batch 256 DSM stayed at the linear
    (Gaussian) denoiser, F ≈ 0, for thousands of steps: samples formed one blob, not the modes.
    """

    def __init__(self, dim: int, out_dim: int | None = None, hidden: int = 128, depth: int = 3,
                 emb_dim: int = 32, time: bool = True):
        super().__init__()
        self.emb = FourierEmbedding(emb_dim) if time else None
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.time_maps = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth)) if time else None
        self.out = nn.Linear(widths[-1], dim if out_dim is None else out_dim)
        self.same_shape = out_dim is None  # a denoiser returns the input's shape

    @property
    def feature_dim(self) -> int:
        return self.layers[-1].out_features

    def features(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer's activations at (x, c_noise): what a frozen trunk hands a ratio head."""
        h = x.flatten(1)
        e = self.emb(c_noise.expand(len(x))) if self.emb is not None else None
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if e is not None:
                h = h + self.time_maps[i](e)
            h = F.silu(h)
        return h

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self.out(self.features(x, c_noise))
        return out.reshape(x.shape) if self.same_shape else out
