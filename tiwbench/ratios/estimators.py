"""Density-ratio estimators: the providers of w_σ(x) (time-dependent) or w(y) (clean) registered in
``tiwbench.registry.RATIOS`` (entry-point group ``tiwbench.ratios``).

An estimator is built from ``(dataset, RatioConfig, time_dependent)``; ``fit(bias, ref, generator,
device, progress)`` returns ``(model, info)``. The model offers

- ``logit(x, σ)``: the raw estimate of log w_σ(x) (for diagnostics: accuracy, calibration);
- ``log_ratio(x, σ, count=None)``: the clipped log w_σ(x), what a method's weight uses;
- ``log_ratio_and_grad(x, σ, count=None)``: the clipped log w_σ(x) and ∇ₓ log w_σ(x), what the score
  correction σ²∇ₓ log w_σ uses. Methods evaluate the whole batch (a fixed shape) and pass ``count``,
  the bool mask of the D_bias rows, so that the clip rate counts those rows only;
- ``logit_max``, ``time_dependent``, and the clip counters ``clipped``, ``seen``, ``clip_rate``.

A clean model (``time_dependent=False``) ignores σ. ``info`` is recorded with every cell.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from tiwbench.config import ConfigError, RatioConfig
from tiwbench.data.base import DataError
from tiwbench.diffusion.losses import device_generator, edm_weight
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond, expand_like
from tiwbench.ratios.discriminator import (
    LearnedRatio,
    RatioTrainConfig,
    balanced_batch,
    draw_ratio_sigma,
    optimise,
    train_ratio,
)


class RatioEstimator(ABC):
    """Base class of registered ratio estimators; third parties subclass it and register an entry
    point in the group ``tiwbench.ratios``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    learned: ClassVar[bool] = True  # False: nothing is fitted and there is no estimation error to diagnose
    # True: the estimator uses what no practitioner has (the true densities, D_ref's true labels); a method
    # trained with it is a reference row of the leaderboard, never a winner
    ceiling: ClassVar[bool] = False

    def __init__(self, dataset, cfg: RatioConfig, time_dependent: bool = True, kernel=None):
        # kernel: the perturbation kernel the score network trains under (its noise levels and input
        # scaling); None: EDM's, with the RatioConfig's noise distribution
        self.dataset, self.cfg, self.time_dependent, self.kernel = dataset, cfg, time_dependent, kernel
        self.split = None  # the group's Split, set by the runner before fit (labels of D_ref)
        # fits shared by a group's estimators (the observed-data denoiser), and the seed they train from; the
        # runner sets both, so that a shared fit is the same whichever estimator asks for it first
        self.shared: dict | None = None
        self.shared_seed: int | None = None
        self.keep: dict | None = None  # receives the held-out selection of the fit (a gate chooses σ* with it)
        # the group's fit of another estimator by name -> (model, info, selection); the runner sets it
        self.base_fit = None

    @classmethod
    def check(cls, dataset) -> None:
        """Raise DataError before any cell runs if this estimator cannot serve ``dataset``.
        Default: every dataset (a learned estimator needs only samples)."""
        return None

    @classmethod
    def check_config(cls, dataset, cfg: RatioConfig) -> None:
        """Raise before any cell runs if ``cfg`` (the ratio budget) cannot serve ``dataset`` with this estimator
        (a trunk file of another resolution). Default: every config."""
        return None

    @abstractmethod
    def fit(self, bias: torch.Tensor, ref: torch.Tensor, generator: torch.Generator, device="cpu",
            progress=None) -> tuple[Any, dict]:
        """The fitted model (the interface above) and what to record about the fit."""

    def train_config(self) -> RatioTrainConfig:
        fields = [f.name for f in dataclasses.fields(RatioTrainConfig) if f.name != "kernel"]
        return RatioTrainConfig(**{k: getattr(self.cfg, k) for k in fields}, kernel=self.kernel)


class Exact(RatioEstimator):
    name = "exact"
    description = "closed-form w_σ and ∇log w_σ of the true mixtures: knows every parameter of the bias (a ceiling)"
    learned = False
    ceiling = True

    @classmethod
    def check(cls, dataset) -> None:
        dataset.exact_ratio()

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        model = self.dataset.exact_ratio(self.time_dependent)
        model.logit_max = self.cfg.logit_max
        return model, {}


class ExactEmpirical(RatioEstimator):
    """The closed-form w_σ between the truth re-weighted to D_ref's empirical component proportions and
    the true p_bias (METHOD.md §5a). Fair under label bias only: it keeps p_bias exactly, so under a tilt
    it knows β and u; `fitted_family` (ratios/fitted.py) is the fair ceiling there."""

    name = "exact_empirical"
    description = ("closed-form w_σ of the truth re-weighted to D_ref's proportions over the true p_bias: "
                   "fair under label bias only")
    learned = False
    ceiling = True  # D_ref's true mode labels, the exact mode shapes and the exact p_bias

    @classmethod
    def check(cls, dataset) -> None:
        dataset.exact_ratio()  # a dataset without closed forms says so
        if not hasattr(dataset, "empirical_ratio"):
            raise DataError(f"dataset {dataset.name!r} has no re-weightable mixture; use `exact` or a learned ratio")

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        if self.split is None:
            raise DataError("exact_empirical needs D_ref's labels: the runner passes the split before fit")
        labels = self.split.ref_labels.long().flatten()
        props = torch.bincount(labels, minlength=self.dataset.num_classes).double() / len(labels)
        model = self.dataset.empirical_ratio(props, self.time_dependent)
        model.logit_max = self.cfg.logit_max
        return model, {"ref_proportions": props.tolist()}


class Discriminator(RatioEstimator):
    """d = sigmoid(ℓ(x, σ)) by class-balanced BCE, ∇log w = ∇ₓℓ by autograd (METHOD.md §3)."""

    name = "discriminator"
    description = "time-conditioned discriminator by balanced BCE; ∇log w from its logit's x-gradient"
    precond: ClassVar[bool | None] = None  # None: as RatioConfig.precond

    def build(self) -> LearnedRatio:
        from tiwbench.ratios.discriminator import make_ratio

        cfg = self.cfg if self.precond is None else dataclasses.replace(self.cfg, precond=self.precond)
        return make_ratio(self.dataset, cfg, self.time_dependent, self.kernel)

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        model = self.build()
        return model, train_ratio(model, bias, ref, self.train_config(), generator, device, progress, keep=self.keep)


class PrecondDiscriminator(Discriminator):
    name = "discriminator_precond"
    description = "discriminator whose logit is output·σ_data/sqrt(σ²+σ_data²): bounded correction at high σ"
    precond = True


class SmoothDiscriminator(Discriminator):
    """The preconditioned discriminator with a penalty on the score correction it implies:
    BCE + γ·E‖σ²∇ₓℓ‖²/σ_data². The correction is what TIW-DSM's target uses; where the data cannot
    resolve it (high σ, few reference points) the penalty shrinks it toward zero instead of letting
    the logit's x-slope follow noise. γ is fixed a priori (0.1: a correction of σ_data costs as much
    as a 0.1 nat rise of the BCE), not tuned on outcomes."""

    name = "discriminator_smooth"
    description = "preconditioned discriminator + penalty γ·E‖σ²∇ℓ‖²/σ_data² on its score correction"
    precond = True
    gamma: ClassVar[float] = 0.1

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        model = self.build()
        if not self.time_dependent:  # a clean classifier has no correction to smooth
            return model, train_ratio(model, bias, ref, self.train_config(), generator, device, progress)
        sd2 = model.sigma_data**2

        def penalty(x, sigma, y, net):
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(net.logit(x, sigma).sum(), x, create_graph=True)
            return self.gamma * ((expand_like(sigma, g) ** 2 * g) ** 2).flatten(1).sum(1).mean() / sd2

        return model, train_ratio(model, bias, ref, self.train_config(), generator, device, progress,
                                  regulariser=penalty, keep=self.keep)


class _Labelled(nn.Module):
    """F(x_in, c_noise) of a network shared by two classes: the class enters as one more input
    feature (vectors) or a constant input plane (images, whose extra output plane is dropped)."""

    def __init__(self, net: nn.Module, label: float):
        super().__init__()
        self.net, self.label = net, label

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x_in.ndim == 4:
            plane = torch.full_like(x_in[:, :1], self.label)
            return self.net(torch.cat([x_in, plane], dim=1), c_noise)[:, : x_in.shape[1]]
        flat = x_in.flatten(1)
        lab = torch.full((len(flat), 1), self.label, dtype=flat.dtype, device=flat.device)
        return self.net(torch.cat([flat, lab], dim=1), c_noise).reshape(x_in.shape)


class DenoiserDifferenceRatio(LearnedRatio):
    """log w_σ from a discriminator's logit; the correction from two denoisers:
    σ²∇log w_σ(x) = E_data[y|x] − E_bias[y|x] ≈ D(x; σ, ref) − D(x; σ, bias) (Tweedie on both marginals).

    EDM's preconditioning makes D = c_skip·x + c_out·F with c_out ≤ σ_data, so the difference stays
    O(σ_data) at every σ, as the true one does (it tends to E_data[y] − E_bias[y]), instead of
    σ²·(error of a slope)."""

    kind = "denoiser_diff"

    def __init__(self, discriminator: LearnedRatio, denoiser_net: nn.Module):
        kernel = discriminator.kernel
        super().__init__(discriminator.net, discriminator.sigma_data, True, discriminator.logit_max,
                         discriminator.precond, kernel)
        self.denoiser_net = denoiser_net
        self.d_ref = EDMPrecond(_Labelled(denoiser_net, 1.0), discriminator.sigma_data, kernel)
        self.d_bias = EDMPrecond(_Labelled(denoiser_net, 0.0), discriminator.sigma_data, kernel)

    def log_ratio_and_grad(self, x: torch.Tensor, sigma,
                           count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(len(x))
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            shift = self.d_ref(xf, sigma) - self.d_bias(xf, sigma)
            logit = self.logit(xf, sigma)
        clipped, _ = self._clip(logit, count)
        # the correction does not depend on the weight's clip: it is the difference of two denoisers
        return clipped.to(x.dtype), (shift / expand_like(sigma, shift) ** 2).to(x.dtype)


def loss_weight(denoiser: EDMPrecond, sigma: torch.Tensor) -> torch.Tensor:
    """λ(σ) of the denoiser's kernel (EDM's when it has none)."""
    k = denoiser.kernel
    return edm_weight(sigma, denoiser.sigma_data) if k is None else k.loss_weight(sigma, denoiser.sigma_data)


def train_labelled_denoiser(d_ref: EDMPrecond, d_bias: EDMPrecond, bias: torch.Tensor, ref: torch.Tensor,
                            cfg: RatioTrainConfig, generator: torch.Generator, device="cpu", progress=None) -> dict:
    """Plain DSM on class-balanced batches, each half through its class's denoiser, σ from the
    ratio models' widened noise distribution (so that the difference is trained over the sampler's range)."""
    params = list(d_ref.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    bias, ref = bias.to(device), ref.to(device)  # once; the draws then come from a generator there
    generator = device_generator(generator, device)
    b = cfg.batch_size
    d_ref.train()

    def step_loss() -> torch.Tensor:
        y, sigma, noise = balanced_batch(ref, bias, b, cfg, generator, device)
        x = y + expand_like(sigma, y) * noise
        denoised = torch.cat([d_ref(x[:b], sigma[:b]), d_bias(x[b:], sigma[b:])])
        return (expand_like(loss_weight(d_ref, sigma), y) * (denoised - y) ** 2).mean()

    final = optimise(opt, step_loss, cfg.steps, device, progress,
                     "labelled-denoiser training produced a non-finite loss")
    d_ref.eval()
    return {"final_dsm": final}


class DenoiserDifference(Discriminator):
    """Weight from the discriminator, correction from a class-labelled denoiser (one network for
    D_ref and D_bias, so the tail classes' denoiser shares what the head's data teach)."""

    name = "denoiser_diff"
    description = "correction D(x;σ,ref) − D(x;σ,bias) of a class-labelled denoiser; weight from the discriminator"

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        disc, info = super().fit(bias, ref, generator, device, progress)
        if not self.time_dependent:
            return disc, info
        if self.dataset.kind == "vector":
            dim = math.prod(self.dataset.shape)
            net: nn.Module = MLP(dim + 1, out_dim=dim, hidden=self.cfg.hidden, depth=self.cfg.depth, time=True)
        else:
            from tiwbench.diffusion.unet import UNet

            c, h, _ = self.dataset.shape
            net = UNet(in_channels=c + 1, resolution=h, channels=self.cfg.channels)
        model = DenoiserDifferenceRatio(disc, net).to(device)
        info.update(train_labelled_denoiser(model.d_ref, model.d_bias, bias, ref, self.train_config(), generator,
                                            device, progress))
        model.eval()
        return model, info


def train_obs_denoiser(d_obs: EDMPrecond, obs: torch.Tensor, cfg: RatioTrainConfig, generator: torch.Generator,
                       device="cpu", progress=None) -> dict:
    """Plain DSM on uniform draws of D_obs (the data dsm_obs trains on), σ from the ratio models'
    widened noise distribution: the score s_obs that DLSM adds its class posterior to."""
    opt = torch.optim.Adam(d_obs.parameters(), lr=cfg.lr)
    n = 2 * cfg.batch_size
    d_obs.train()

    def step_loss() -> torch.Tensor:
        y = obs[torch.randint(len(obs), (n,), generator=generator)].to(device)
        sigma = draw_ratio_sigma(n, cfg, generator, device)
        x = y + expand_like(sigma, y) * torch.randn(y.shape, generator=generator).to(device)
        return (expand_like(loss_weight(d_obs, sigma), y) * (d_obs(x, sigma) - y) ** 2).mean()

    final = optimise(opt, step_loss, cfg.steps, device, progress,
                     "observed-data denoiser training produced a non-finite loss")
    d_obs.eval().requires_grad_(False)
    return {"final_obs_dsm": final}


def class_denoiser(logit: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, d_obs_x: torch.Tensor,
                   is_ref: torch.Tensor, log_prior_odds: float, create_graph: bool = True) -> torch.Tensor:
    """E_c[y | x] from the observed-data denoiser and the class posterior (Chao et al. 2022; METHOD.md §3):
    D_c(x) = D_obs(x) + σ² ∇ₓ log P(c | x), with P(ref | x) = sigmoid(ℓ + log(π/(1−π))) for the
    class-balanced logit ℓ (exp ℓ = w_σ) and D_obs trained on a mixture with a share π of D_ref.
    ``logit`` must be a function of ``x`` (which requires grad)."""
    sign = torch.where(is_ref, 1.0, -1.0).to(logit.dtype)
    log_post = F.logsigmoid(sign * (logit + log_prior_odds))
    (g,) = torch.autograd.grad(log_post.sum(), x, create_graph=create_graph)
    return d_obs_x + expand_like(sigma, g) ** 2 * g


def dlsm_term(model: LearnedRatio, d_obs: EDMPrecond, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
              is_ref: torch.Tensor, log_prior_odds: float) -> torch.Tensor:
    """λ(σ) ‖D_obs(x) + σ²∇ₓ log P(c|x) − y‖² per sample: denoising score matching of each class's score
    s_obs + ∇log P(c|x) against (y − x)/σ², written in denoiser units (times σ⁴), as DSM is here."""
    x = x.detach().requires_grad_(True)
    with torch.no_grad():
        d_obs_x = d_obs(x.detach(), sigma)
    d_c = class_denoiser(model.logit(x, sigma), x, sigma, d_obs_x, is_ref, log_prior_odds)
    return expand_like(loss_weight(d_obs, sigma), y) * (d_c - y) ** 2


class DLSM(Discriminator):
    """Denoising likelihood score matching (after Chao et al. 2022): the discriminator's logit ℓ is
    trained by balanced BCE plus a DSM term on the class scores s_obs + ∇ₓ log P(c | x), so that the
    input gradient TIW-DSM's correction uses is itself trained (docs/ratios.md). s_obs comes from a
    denoiser of D_obs trained first (the score dsm_obs learns), kept fixed."""

    name = "dlsm"
    description = "discriminator trained by BCE + denoising likelihood score matching of its x-gradient"

    @classmethod
    def check(cls, dataset) -> None:
        if dataset.kind != "vector":
            raise DataError(f"ratio estimator {cls.name!r} works on vector data only; for {dataset.name!r} use "
                            "'discriminator', 'denoiser_diff' or 'trunk'")

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        model = self.build()
        cfg = self.train_config()
        if not self.time_dependent:  # a clean classifier has no score to match
            return model, train_ratio(model, bias, ref, cfg, generator, device, progress)
        if self.dataset.kind != "vector":  # the DLSM term's double backward through a U-Net is out of budget
            raise ConfigError(f"ratio estimator {self.name!r} works on vector data only; for {self.dataset.name!r} "
                              "use 'discriminator', 'denoiser_diff' or 'trunk'")
        d_obs, obs_info = observed_denoiser(self, bias, ref, generator, device, progress)
        term, log_prior_odds = dlsm_regulariser(d_obs, len(ref), len(bias), cfg.batch_size, device)
        info = {**obs_info, **train_ratio(model, bias, ref, cfg, generator, device, progress, regulariser=term,
                                          keep=self.keep)}
        info["log_prior_odds"] = log_prior_odds
        return model, info


def dlsm_regulariser(d_obs: EDMPrecond, n_ref: int, n_bias: int, b: int, device):
    """The DLSM term as ``train_ratio``'s regulariser (balanced batches of ``b`` per class, D_ref first; the term
    of the model being trained, held-out selection's copy included), and the prior odds log(π/(1−π)) it shifts
    the balanced logit by (D_obs saw D_ref with share π)."""
    log_prior_odds = math.log(n_ref / n_bias)
    is_ref = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(device)

    def term(x, sigma, y, model):
        return dlsm_term(model, d_obs, x, sigma, y, is_ref, log_prior_odds).flatten(1).sum(1).mean()

    return term, log_prior_odds


def observed_network(dataset, cfg: RatioConfig) -> nn.Module:
    """The observed-data denoiser's raw network: an MLP of the ratio models' size (vectors), the U-Net of
    `denoiser_diff`'s width (images)."""
    if dataset.kind == "vector":
        return MLP(math.prod(dataset.shape), hidden=cfg.hidden, depth=cfg.depth)
    from tiwbench.diffusion.unet import UNet

    c, h, _ = dataset.shape
    return UNet(in_channels=c, resolution=h, channels=cfg.channels)


def observed_denoiser(est: RatioEstimator, bias: torch.Tensor, ref: torch.Tensor, generator: torch.Generator,
                      device="cpu", progress=None) -> tuple[EDMPrecond, dict]:
    """The observed-data denoiser (plain DSM on D_obs, the ratio models' network size and noise levels), fixed
    once trained: dlsm adds its class posterior to it and `trunk` reads its hidden features. Trained once per
    group (``est.shared``) from its own seed (``est.shared_seed``; without one, ``generator``'s), its init under
    a forked RNG: the same network whichever estimator asks first, and the asker's own draws untouched."""
    cache = est.shared if est.shared is not None else {}
    key = ("observed_denoiser", getattr(est.kernel, "name", "edm"))
    if key not in cache:
        seed = est.shared_seed if est.shared_seed is not None else generator.initial_seed()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = observed_network(est.dataset, est.cfg)
        d_obs = EDMPrecond(net, est.dataset.sigma_data, est.kernel).to(device)
        g = torch.Generator().manual_seed(seed ^ 0x0B5D)
        cache[key] = (d_obs, train_obs_denoiser(d_obs, torch.cat([ref, bias]), est.train_config(), g, device,
                                                progress))
    return cache[key]
