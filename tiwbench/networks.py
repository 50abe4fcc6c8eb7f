"""Which networks a dataset gets: MLPs for vector data, U-Nets and conv discriminators for images."""

from __future__ import annotations

import math

from torch import nn

from tiwbench.config import RatioConfig, TrainConfig
from tiwbench.diffusion.nets import MLP
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.ratio import LearnedRatio


def make_denoiser(dataset, cfg: TrainConfig) -> EDMPrecond:
    if dataset.kind == "vector":
        model: nn.Module = MLP(math.prod(dataset.shape), hidden=cfg.hidden, depth=cfg.depth)
    else:
        from tiwbench.diffusion.unet import UNet

        c, h, _ = dataset.shape
        model = UNet(in_channels=c, resolution=h, channels=cfg.channels, channel_mult=tuple(cfg.channel_mult),
                     dropout=cfg.dropout, num_blocks=cfg.num_blocks, attn_resolutions=tuple(cfg.attn_resolutions))
    return EDMPrecond(model, sigma_data=dataset.sigma_data)


def make_ratio(dataset, cfg: RatioConfig, time_dependent: bool) -> LearnedRatio:
    if dataset.kind == "vector":
        net: nn.Module = MLP(math.prod(dataset.shape), out_dim=1, hidden=cfg.hidden, depth=cfg.depth,
                             time=time_dependent)
    else:
        from tiwbench.diffusion.unet import ImageDiscriminator

        c, h, _ = dataset.shape
        net = ImageDiscriminator(in_channels=c, resolution=h, channels=cfg.channels, time=time_dependent,
                                 feature_extractor=cfg.feature_extractor or None, sigma_data=dataset.sigma_data)
    return LearnedRatio(net, dataset.sigma_data, time_dependent=time_dependent, logit_max=cfg.logit_max,
                        precond=cfg.precond)
