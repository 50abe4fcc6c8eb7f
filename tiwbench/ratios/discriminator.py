"""Density-ratio models (METHOD.md §3): the time-dependent discriminator ℓ_φ(x, σ) and the
time-independent classifier of IW-DSM, trained by class-balanced BCE, used through the logit; and
which network a dataset gets for them (an MLP for vectors, a conv discriminator for images)."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tiwbench.best_step import best_step
from tiwbench.config import RatioConfig
from tiwbench.diffusion.losses import device_generator
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import expand_like

LOGIT_MAX = math.log(1e5)  # clip ℓ to ±log 1e5 ≈ 11.5


class LearnedRatio(nn.Module):
    """w = exp(ℓ), ℓ = logit of d = P(reference | x, σ). ``net(x_in, c_noise) -> [B, 1]``.

    The input is scaled by 1/sqrt(σ² + σ_data²) (EDM's c_in), so one net sees unit-scale inputs
    at every noise level. A time-independent classifier is the same with σ ignored. With
    ``precond`` the logit is the net's output times σ_data/sqrt(σ² + σ_data²), the natural scale
    of log w_σ at high noise.
    """

    kind = "learned"

    def __init__(self, net: nn.Module, sigma_data: float, time_dependent: bool = True,
                 logit_max: float = LOGIT_MAX, precond: bool = False, kernel=None):
        super().__init__()
        self.net, self.sigma_data, self.time_dependent, self.logit_max = net, sigma_data, time_dependent, logit_max
        self.precond = precond and time_dependent
        # a perturbation kernel's c_in and c_noise (the inputs its score network sees); None: EDM's
        self.kernel = kernel if time_dependent else None
        self.clean_sigma = 0.0  # the σ a clean classifier's net is shown (a noise-conditional trunk: its smallest)
        self.register_buffer("clipped", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)

    def logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The raw (unclipped) logit, differentiable in x and φ, in full precision even under autocast
        (w and σ²∇log w amplify rounding: bf16 would shift the regression target)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._logit(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, sigma)

    def _logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if not self.time_dependent:
            sigma = torch.full((len(x),), self.clean_sigma, device=x.device, dtype=x.dtype)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x))
        if self.kernel is not None:
            _, _, c_in, c_noise = self.kernel.precond(sigma.clamp_min(1e-6), self.sigma_data)
            c_in = expand_like(c_in, x)
        else:
            c_in = 1 / (expand_like(sigma, x) ** 2 + self.sigma_data**2).sqrt()
            c_noise = sigma.clamp_min(1e-4).log() / 4
        logit = self.net(c_in * x, c_noise).reshape(len(x))
        if self.precond:
            # As σ grows, log w_σ(x) ≈ Δμ·x/σ² = O(σ_data/σ) on noisy x, so the net predicts it in
            # units of σ_data/σ: its output stays O(1), and the score correction
            # σ²∇ₓℓ = σ_data·(∂net/∂input) stays bounded instead of growing like σ·(net's error).
            logit = logit * (self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt())
        return logit

    def _clip(self, logit: torch.Tensor, count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``count``: bool mask of the rows the clip rate counts (all when None)."""
        inside = logit.abs() <= self.logit_max
        if count is None:
            self.clipped += (~inside).sum()  # stays on device: no host sync per step
            self.seen += len(logit)
        else:
            self.clipped += (~inside & count).sum()
            self.seen += count.sum()
        return logit.clamp(-self.logit_max, self.logit_max), inside

    @torch.no_grad()
    def log_ratio(self, x: torch.Tensor, sigma, count: torch.Tensor | None = None) -> torch.Tensor:
        return self._clip(self.logit(x, sigma), count)[0]

    def log_ratio_and_grad(self, x: torch.Tensor, sigma,
                           count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped ℓ and ∇_x ℓ (zero where the clip binds, as the clipped function is flat there)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logit = self.logit(x, sigma)
            (grad,) = torch.autograd.grad(logit.sum(), x)
        clipped, inside = self._clip(logit.detach(), count)
        return clipped, grad * expand_like(inside.to(grad.dtype), grad)

    @property
    def clip_rate(self) -> float:
        return float(self.clipped) / max(int(self.seen), 1)


class ClipCountsOf:
    """For a ratio model whose weight is another model's (``counts_from`` names the attribute holding it): the
    clip counters a cell resets and reads (``clipped``, ``seen``, ``clip_rate``) are that model's."""

    counts_from: str = "weight"

    @property
    def clipped(self):
        return getattr(self, self.counts_from).clipped

    @clipped.setter
    def clipped(self, value):
        getattr(self, self.counts_from).clipped = value

    @property
    def seen(self):
        return getattr(self, self.counts_from).seen

    @seen.setter
    def seen(self, value):
        getattr(self, self.counts_from).seen = value

    @property
    def clip_rate(self) -> float:
        return getattr(self, self.counts_from).clip_rate


@dataclass
class RatioTrainConfig:
    steps: int = 1500  # optimiser steps
    batch_size: int = 256  # per class: every batch is half D_ref, half D_bias
    lr: float = 1e-3
    weight_decay: float = 1e-4
    p_mean: float = -1.2  # ln σ ~ N(p_mean, p_std²) for half the batch ...
    p_std: float = 1.2
    sigma_min: float = 0.002  # ... and log-uniform over the sampler's range for the other half
    sigma_max: float = 80.0
    select_every: int = 0  # steps between held-out BCE checks (0: no selection, train for `steps`)
    select_holdout: float = 0.2  # share of each set held out while the step count is chosen
    select_patience: int = 0  # stop choosing after this many checks without a better one (0: check to the end)
    kernel: Any = None  # a perturbation kernel: its training noise and sampler range replace the four above


def draw_ratio_sigma(n: int, cfg: RatioTrainConfig, generator: torch.Generator, device="cpu") -> torch.Tensor:
    """The training-noise distribution, widened so that it covers the sampler's whole σ range."""
    dev = generator.device  # drawn where the generator lives (the training device: no copy)
    if cfg.kernel is not None:
        normal = cfg.kernel.sample_sigma(n, generator, device=dev).log()
        lo, hi = (math.log(v) for v in cfg.kernel.sigma_range())
    else:
        normal = torch.randn(n, generator=generator, device=dev) * cfg.p_std + cfg.p_mean
        lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    uniform = torch.rand(n, generator=generator, device=dev) * (hi - lo) + lo
    pick = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(pick, normal, uniform).exp().to(device)


def balanced_batch(ref: torch.Tensor, bias: torch.Tensor, b: int, cfg: RatioTrainConfig,
                   generator: torch.Generator, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b`` samples of D_ref then ``b`` of D_bias, each with its own σ (the widened training-noise
    distribution) and standard-normal noise: the batch every ratio model trains on. Draws come from
    ``generator`` where it lives; with the data and the generator on ``device`` nothing is copied."""
    dev = generator.device
    i_ref = torch.randint(len(ref), (b,), generator=generator, device=dev).to(ref.device)
    i_bias = torch.randint(len(bias), (b,), generator=generator, device=dev).to(bias.device)
    y = torch.cat([ref[i_ref], bias[i_bias]]).to(device)
    sigma = draw_ratio_sigma(2 * b, cfg, generator, device)
    noise = torch.randn(y.shape, generator=generator, device=dev).to(device)
    return y, sigma, noise


def train_ratio(model: LearnedRatio, bias: torch.Tensor, ref: torch.Tensor, cfg: RatioTrainConfig,
                generator: torch.Generator, device="cpu", progress=None, regulariser=None, on_step=None,
                keep: dict | None = None) -> dict:
    """Balanced BCE: D_ref labelled 1, D_bias labelled 0, each sample at its own σ; plus
    ``regulariser(x, sigma, y, model)`` (a scalar; y the clean samples, D_ref's first; ``model`` the one being
    trained, so that held-out selection's copy is regularised through its own logit) when given. The data move
    to ``device`` once and every draw comes from a generator there (``device_generator``: on the CPU the
    given one, the same draws). With ``cfg.select_every`` the step count is chosen first
    (:func:`select_ratio_steps`; ``keep`` receives its selection). Parameters that do not require grad (a
    frozen trunk) are left out of the optimiser."""
    if cfg.select_every:
        return select_ratio_steps(model, bias, ref, cfg, generator, device, progress, regulariser, keep)
    model.to(device).train()
    bias, ref = bias.to(device), ref.to(device)
    generator = device_generator(generator, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    b = cfg.batch_size
    labels = torch.cat([torch.ones(b), torch.zeros(b)]).to(device)

    def step_loss() -> torch.Tensor:
        y, sigma, noise = balanced_batch(ref, bias, b, cfg, generator, device)
        x = y + expand_like(sigma, y) * noise if model.time_dependent else y
        loss = F.binary_cross_entropy_with_logits(model.logit(x, sigma), labels)
        return loss if regulariser is None else loss + regulariser(x, sigma, y, model)

    final = optimise(opt, step_loss, cfg.steps, device, progress, "ratio-model training produced a non-finite BCE loss",
                     on_step)
    model.eval()
    return {"final_bce": final}


@dataclass
class HeldOut:
    """The held-out split of selection: the fit parts, the held-out clean points, and the fixed perturbed
    points (four per held-out point) whose class-balanced BCE is scored."""

    ref_fit: torch.Tensor
    ref_out: torch.Tensor
    bias_fit: torch.Tensor
    bias_out: torch.Tensor
    x: torch.Tensor
    sigma: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor  # classes count equally
    seed: int


def held_out_split(ref: torch.Tensor, bias: torch.Tensor, cfg: RatioTrainConfig, seed: int, time_dependent: bool,
                   device="cpu") -> HeldOut:
    """``cfg.select_holdout`` of D_ref and of D_bias held out (at most 2048 of each scored), from ``seed``."""
    hold = torch.Generator().manual_seed(seed ^ 0x5E1EC7)  # the split and held-out draws
    parts = []
    for data in (ref, bias):
        perm = torch.randperm(len(data), generator=hold)
        n_out = min(len(data) - 1, max(1, round(cfg.select_holdout * len(data))))
        parts.append((data[perm[n_out:]], data[perm[:n_out][:2048]]))  # (fit, held out; at most 2048 scored)
    (ref_fit, ref_out), (bias_fit, bias_out) = parts
    y = torch.cat([ref_out, bias_out]).repeat(4, *[1] * (ref.dim() - 1)).to(device)
    labels = torch.cat([torch.ones(len(ref_out)), torch.zeros(len(bias_out))]).repeat(4).to(device)
    weight = torch.where(labels > 0, 0.5 / len(ref_out) / 4, 0.5 / len(bias_out) / 4)
    sigma = draw_ratio_sigma(len(y), cfg, hold, device)
    x = y + expand_like(sigma, y) * torch.randn(y.shape, generator=hold).to(device) if time_dependent else y
    return HeldOut(ref_fit, ref_out, bias_fit, bias_out, x, sigma, labels, weight, seed)


def held_out_bce(logit: torch.Tensor, held: HeldOut) -> float:
    """Class-balanced BCE of logits of ``held.x`` against the held-out labels."""
    bce = F.binary_cross_entropy_with_logits(logit.float(), held.labels, reduction="none")
    return float((bce * held.weight).sum())


@dataclass
class Selection:
    """What held-out selection found: the BCE per check, the best step, its value, and the trial model at that
    step (trained on ``held``'s fit parts only, so that the held-out points are out of sample for it)."""

    values: dict[int, float]
    best: int
    best_value: float
    trial: LearnedRatio | None
    held: HeldOut


def choose_ratio_steps(model: LearnedRatio, bias: torch.Tensor, ref: torch.Tensor, cfg: RatioTrainConfig,
                       generator: torch.Generator, device="cpu", progress=None, regulariser=None,
                       split_seed: int | None = None) -> Selection:
    """The choosing half of :func:`select_ratio_steps`: a copy of ``model`` trains on the fit parts and is scored
    every ``cfg.select_every`` steps; ``model`` and the generator's state are left as they were."""
    start = generator.get_state()
    held = held_out_split(ref, bias, cfg, generator.initial_seed() if split_seed is None else split_seed,
                          model.time_dependent, device)
    trial = copy.deepcopy(model)
    values: dict[int, float] = {}
    kept: dict[str, Any] = {}

    class Patience(Exception):
        pass

    def check(step: int) -> None:
        if step % cfg.select_every and step != cfg.steps:
            return
        trial.eval()
        with torch.no_grad():
            values[step] = held_out_bce(trial.logit(held.x, held.sigma), held)
        trial.train()
        if math.isfinite(values[step]) and ("value" not in kept or values[step] < kept["value"]):
            kept["value"], kept["state"] = values[step], copy.deepcopy(trial.state_dict())
        best_so_far = best_step(values, default=step)
        if cfg.select_patience and len([k for k in values if k > best_so_far]) >= cfg.select_patience:
            raise Patience  # no better check in that many: later ones are not looked at (nor paid for)

    plain = dataclasses.replace(cfg, select_every=0, select_patience=0)
    try:
        train_ratio(trial, held.bias_fit, held.ref_fit, plain, generator, device, progress, regulariser,
                    on_step=check)
    except Patience:
        pass
    generator.set_state(start)
    best = best_step(values, default=cfg.steps)  # the same rule as a cell's checkpoint (training.selection)
    if "state" in kept:
        trial.load_state_dict(kept["state"])
        trial.eval()
    return Selection(values, best, values.get(best, math.inf), trial if "state" in kept else None, held)


def select_ratio_steps(model: LearnedRatio, bias: torch.Tensor, ref: torch.Tensor, cfg: RatioTrainConfig,
                       generator: torch.Generator, device="cpu", progress=None, regulariser=None,
                       keep: dict | None = None) -> dict:
    """Early stopping with a refit. A copy of ``model`` (same initial weights, same draws) trains on all but
    ``cfg.select_holdout`` of D_ref and of D_bias; every ``cfg.select_every`` steps its balanced BCE on the
    held-out points (fixed σ and noise, four per point) is scored. ``model`` is then trained on all the data
    for the best step count: exactly the model a plain run of that many steps gives. The first checks never
    depend on ``cfg.steps``, so twice the budget changes the choice only if a later check is strictly better.
    With ``cfg.select_patience`` the copy stops after that many checks without a better one (early stopping:
    the same choice as checking to the end unless the held-out BCE falls again later). ``keep`` (a dict)
    receives the :class:`Selection` under "selection" (its trial is out of sample on the held-out points)."""
    init = copy.deepcopy(model.state_dict())
    sel = choose_ratio_steps(model, bias, ref, cfg, generator, device, progress, regulariser)
    if keep is not None:
        keep["selection"] = sel
    model.load_state_dict(init)
    plain = dataclasses.replace(cfg, select_every=0, select_patience=0, steps=sel.best)
    info = train_ratio(model, bias, ref, plain, generator, device, progress, regulariser)
    return {**info, "selection": {"every": cfg.select_every, "holdout": cfg.select_holdout,
                                  "patience": cfg.select_patience, "steps": sel.best,
                                  "values": {str(k): v for k, v in sel.values.items()}}}


def optimise(opt: torch.optim.Optimizer, step_loss, steps: int, device, progress, nonfinite: str,
             on_step=None) -> float:
    """The optimiser loop every ratio model and its helper denoisers share: ``step_loss()`` draws a batch and
    returns its loss; ``on_step(step)`` after each step when given. Returns the mean loss of the last tenth of
    the steps; a non-finite loss anywhere is a ``FloatingPointError`` saying ``nonfinite`` (checked once at
    the end: no host sync per step)."""
    losses = torch.zeros(steps, device=device)
    for step in range(steps):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = loss.detach()
        if on_step is not None:
            on_step(step + 1)
        if progress is not None:
            progress(step + 1, steps)
    if not torch.isfinite(losses).all():
        raise FloatingPointError(f"{nonfinite}; lower ratio.lr")
    return float(losses[-max(1, steps // 10):].mean())


def make_ratio(dataset, cfg: RatioConfig, time_dependent: bool, kernel=None) -> LearnedRatio:
    if dataset.kind == "vector":
        net: nn.Module = MLP(math.prod(dataset.shape), out_dim=1, hidden=cfg.hidden, depth=cfg.depth,
                             time=time_dependent)
    else:
        from tiwbench.diffusion.unet import ImageDiscriminator

        c, h, _ = dataset.shape
        extractor = None
        if cfg.feature_extractor:  # a frozen evaluator classifier whose features join the discriminator's
            from tiwbench.data.evaluator import load_classifier

            extractor = load_classifier(cfg.feature_extractor)
        net = ImageDiscriminator(in_channels=c, resolution=h, channels=cfg.channels, time=time_dependent,
                                 feature_extractor=extractor, sigma_data=dataset.sigma_data)
    return LearnedRatio(net, dataset.sigma_data, time_dependent=time_dependent, logit_max=cfg.logit_max,
                        precond=cfg.precond, kernel=kernel)
