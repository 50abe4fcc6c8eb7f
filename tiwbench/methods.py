"""Training methods: each is a short delta on plain DSM returning per-element losses (METHOD.md §4).

A method declares what it trains on (``obs`` = D_bias ∪ D_ref, ``ref`` = D_ref, ``oracle`` = a
large unbiased set) and which ratio model it needs (``time``, ``clean`` or none). D_ref samples
keep weight 1 and no correction; only D_bias samples are reweighted or corrected.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tiwbench.config import like_default
from tiwbench.diffusion.losses import Batch, dsm_loss
from tiwbench.diffusion.precond import expand_like


class Method:
    """Base class of registered methods; third parties subclass it and register an entry point
    in the group ``tiwbench.methods``."""

    name: ClassVar[str] = ""
    train_on: ClassVar[str] = "obs"  # "obs" | "ref" | "oracle"
    ratio: ClassVar[str | None] = None  # None | "time" | "clean"
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # method options, settable from a suite
    # Sampling-time methods: the ratio the sampler's hooks need (None | "time" | "clean"), and the
    # method whose training (init and batch seeds) they share, so that the comparison is paired.
    sampling_ratio: ClassVar[str | None] = None
    trains_as: ClassVar[str | None] = None
    per_sample_weights: ClassVar[bool] = True  # with a ratio: D_bias samples weighted by w (the recorded ESS)

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {self.name!r}; allowed: {sorted(self.defaults)}")
        for key, value in options.items():
            try:
                options[key] = like_default(value, self.defaults[key])
            except TypeError as e:
                raise TypeError(f"option {key!r} of method {self.name!r} {e}") from None
        self.options = {**self.defaults, **options}

    def loss(self, net, batch: Batch, ratio=None) -> torch.Tensor:
        """Per-element loss, the shape of ``batch.y``."""
        return dsm_loss(net, batch)

    def sampling_denoiser(self, net, ratio=None, ref_share: float = 0.0):
        """The denoiser D(x; σ) the sampler integrates. ``ref_share`` is π = |D_ref|/|D_obs|, the share
        of reference data in what the network was trained on. Default: the trained network itself."""
        return net

    def finish_samples(self, samples: torch.Tensor, ratio=None, ref_share: float = 0.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """A transform of the finished samples (e.g. resampling). Default: none."""
        return samples


def scatter_bias(batch: Batch, fill: float, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``like`` holding ``fill`` for D_ref samples and ``values`` for D_bias ones."""
    out = torch.full_like(like, fill)
    return out.index_put((batch.bias_idx,), values.to(out.dtype))


class TIWDSM(Method):
    """Time-dependent importance reweighting with score correction (Kim et al. 2024, Thm. 1):
    D_bias samples get weight w_σ(x) and target y + σ² ∇_x log w_σ(x)."""

    name = "tiw_dsm"
    ratio = "time"
    description = "TIW-DSM: time-dependent weight w_σ(x) and score correction σ²∇log w_σ(x)"

    def loss(self, net, batch: Batch, ratio=None) -> torch.Tensor:
        idx = batch.bias_idx
        sigma = batch.sigma[idx]
        log_w, grad = ratio.log_ratio_and_grad(batch.x[idx], sigma)
        weight = scatter_bias(batch, 1.0, log_w.exp(), batch.sigma)
        shift = scatter_bias(batch, 0.0, expand_like(sigma, grad) ** 2 * grad, batch.y)
        return dsm_loss(net, batch, weight=weight, target_shift=shift)
