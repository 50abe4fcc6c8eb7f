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
    family: ClassVar[str] = "score"  # the generator family that trains and samples it (`tiwbench ls families`)
    train_on: ClassVar[str] = "obs"  # "obs" | "ref" | "oracle"
    ratio: ClassVar[str | None] = None  # None | "time" | "clean"
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # method options, settable from a suite
    # Sampling-time methods: the ratio the sampler's hooks need (None | "time" | "clean"), and the
    # method whose training (init and batch seeds) they share, so that the comparison is paired.
    sampling_ratio: ClassVar[str | None] = None
    trains_as: ClassVar[str | None] = None
    per_sample_weights: ClassVar[bool] = True  # with a ratio: D_bias samples weighted by w (the recorded ESS)
    # True: trains on what no practitioner has (e.g. a large unbiased set); a reference row, never a winner
    ceiling: ClassVar[bool] = False

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


def neutral_on_ref(batch: Batch, bias_values: torch.Tensor, fill: float, like: torch.Tensor) -> torch.Tensor:
    """``bias_values`` (one per sample of the whole batch) on D_bias rows, ``fill`` on D_ref rows.
    A select, not a multiply, so a non-finite value on a D_ref row never leaks into its loss."""
    keep = expand_like(~batch.is_ref, like)
    return torch.where(keep, bias_values.to(like.dtype), fill)


def ratio_on_batch(ratio, batch: Batch, inputs: str = "x", grad: bool = False):
    """log w (and ∇log w with ``grad``) of every sample of the batch at its σ, D_ref rows neutral
    (log w = 0, ∇log w = 0).

    The ratio model sees the whole batch, a fixed shape, however many D_bias samples it holds: no
    host sync to find them, and one shape for cudnn's autotuning, torch.compile and CUDA graphs.
    ``inputs``: "x" (noisy, time-dependent ratio) or "y" (clean data, IW-DSM's classifier).
    """
    xin = batch.x if inputs == "x" else batch.y
    count = ~batch.is_ref  # the clip rate counts D_bias samples only
    if grad:
        log_w, g = ratio.log_ratio_and_grad(xin, batch.sigma, count=count)
        return neutral_on_ref(batch, log_w, 0.0, batch.sigma), neutral_on_ref(batch, g, 0.0, batch.y)
    return neutral_on_ref(batch, ratio.log_ratio(xin, batch.sigma, count=count), 0.0, batch.sigma)


class TIWDSM(Method):
    """Time-dependent importance reweighting with score correction (Kim et al. 2024, Thm. 1):
    D_bias samples get weight w_σ(x) and target y + σ² ∇_x log w_σ(x)."""

    name = "tiw_dsm"
    ratio = "time"
    description = "TIW-DSM: time-dependent weight w_σ(x) and score correction σ²∇log w_σ(x)"

    def loss(self, net, batch: Batch, ratio=None) -> torch.Tensor:
        log_w, grad = ratio_on_batch(ratio, batch, grad=True)  # D_ref rows: weight 1, shift 0
        shift = expand_like(batch.sigma, grad) ** 2 * grad
        return dsm_loss(net, batch, weight=log_w.exp(), target_shift=shift)
