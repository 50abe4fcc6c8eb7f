"""Raw networks F(x_in, c_noise) for vector data; images live in :mod:`tiwbench.diffusion.unet`."""

from __future__ import annotations

import math

import torch
from torch import nn


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
    """An MLP on [x, embed(c_noise)], for vector data and for the time-dependent discriminator."""

    def __init__(self, dim: int, out_dim: int | None = None, hidden: int = 128, depth: int = 3,
                 emb_dim: int = 32, time: bool = True):
        super().__init__()
        self.emb = FourierEmbedding(emb_dim) if time else None
        layers: list[nn.Module] = []
        width = dim + (emb_dim if time else 0)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim if out_dim is None else out_dim))
        self.net = nn.Sequential(*layers)
        self.same_shape = out_dim is None  # a denoiser returns the input's shape

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        h = x.flatten(1)
        if self.emb is not None:
            h = torch.cat([h, self.emb(c_noise.expand(len(x)))], dim=1)
        out = self.net(h)
        return out.reshape(shape) if self.same_shape else out
