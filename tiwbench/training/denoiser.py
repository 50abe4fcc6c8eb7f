"""Which score network a dataset gets: an MLP for vector data, a U-Net for images."""

from __future__ import annotations

import math

from torch import nn

from tiwbench.config import TrainConfig
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond


def make_denoiser(dataset, cfg: TrainConfig, kernel=None) -> EDMPrecond:
    """``kernel``: its preconditioning, loss weight and training noise (None: EDM's)."""
    if dataset.kind == "vector":
        model: nn.Module = MLP(math.prod(dataset.shape), hidden=cfg.hidden, depth=cfg.depth)
    else:
        from tiwbench.diffusion.unet import UNet

        c, h, _ = dataset.shape
        model = UNet(in_channels=c, resolution=h, channels=cfg.channels, channel_mult=tuple(cfg.channel_mult),
                     dropout=cfg.dropout, num_blocks=cfg.num_blocks, attn_resolutions=tuple(cfg.attn_resolutions))
    return EDMPrecond(model, sigma_data=dataset.sigma_data, kernel=kernel)
