"""Density-ratio models (METHOD.md §3): the time-dependent discriminator ℓ_φ(x, σ) and the
time-independent classifier of IW-DSM, trained by class-balanced BCE, used through the logit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

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
                 logit_max: float = LOGIT_MAX, precond: bool = False):
        super().__init__()
        self.net, self.sigma_data, self.time_dependent, self.logit_max = net, sigma_data, time_dependent, logit_max
        self.precond = precond and time_dependent
        self.register_buffer("clipped", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)

    def logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The raw (unclipped) logit, differentiable in x and φ, in full precision even under autocast
        (w and σ²∇log w amplify rounding: bf16 would shift the regression target)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._logit(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, sigma)

    def _logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if not self.time_dependent:
            sigma = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x))
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


def draw_ratio_sigma(n: int, cfg: RatioTrainConfig, generator: torch.Generator, device="cpu") -> torch.Tensor:
    """The training-noise distribution, widened so that it covers the sampler's whole σ range."""
    normal = torch.randn(n, generator=generator) * cfg.p_std + cfg.p_mean
    lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    uniform = torch.rand(n, generator=generator) * (hi - lo) + lo
    pick = torch.rand(n, generator=generator) < 0.5
    return torch.where(pick, normal, uniform).exp().to(device)


def balanced_batch(ref: torch.Tensor, bias: torch.Tensor, b: int, cfg: RatioTrainConfig,
                   generator: torch.Generator, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b`` samples of D_ref then ``b`` of D_bias, each with its own σ (the widened training-noise
    distribution) and standard-normal noise: the batch every ratio model trains on."""
    i_ref = torch.randint(len(ref), (b,), generator=generator)
    i_bias = torch.randint(len(bias), (b,), generator=generator)
    y = torch.cat([ref[i_ref], bias[i_bias]]).to(device)
    sigma = draw_ratio_sigma(2 * b, cfg, generator, device)
    noise = torch.randn(y.shape, generator=generator).to(device)
    return y, sigma, noise


def train_ratio(model: LearnedRatio, bias: torch.Tensor, ref: torch.Tensor, cfg: RatioTrainConfig,
                generator: torch.Generator, device="cpu", progress=None, regulariser=None) -> dict:
    """Balanced BCE: D_ref labelled 1, D_bias labelled 0, each sample at its own σ; plus
    ``regulariser(x, sigma)`` (a scalar) when given."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    b = cfg.batch_size
    labels = torch.cat([torch.ones(b), torch.zeros(b)]).to(device)
    losses = torch.zeros(cfg.steps, device=device)
    for step in range(cfg.steps):
        y, sigma, noise = balanced_batch(ref, bias, b, cfg, generator, device)
        x = y + expand_like(sigma, y) * noise if model.time_dependent else y
        loss = F.binary_cross_entropy_with_logits(model.logit(x, sigma), labels)
        if regulariser is not None:
            loss = loss + regulariser(x, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = loss.detach()
        if progress is not None:
            progress(step + 1, cfg.steps)
    model.eval()
    if not torch.isfinite(losses).all():
        raise FloatingPointError("ratio-model training produced a non-finite BCE loss; lower ratio.lr")
    return {"final_bce": float(losses[-max(1, cfg.steps // 10):].mean())}


SIGMA_BANDS = ((0.002, 0.05), (0.05, 0.2), (0.2, 1.0), (1.0, 5.0), (5.0, 80.0))


@torch.no_grad()
def ratio_diagnostics(model, bias: torch.Tensor, ref: torch.Tensor, generator: torch.Generator,
                      exact=None, n: int = 2000, device="cpu") -> list[dict]:
    """Per σ band: balanced accuracy and ECE of d, the clip rate and, given the exact ratio, the
    mean squared errors of log w_σ, w_σ and the correction σ²∇log w_σ on D_bias samples (the estimation
    error the paper's Fig. 2 reports), each with its signal (``*_norm``: the mean square of log w, of
    w − 1 and of the exact correction) so that errors read relative to it."""
    out = []
    bands = SIGMA_BANDS if model.time_dependent else ((0.0, 0.0),)  # a clean classifier sees σ = 0
    for lo, hi in bands:
        i_ref = torch.randint(len(ref), (n,), generator=generator)
        i_bias = torch.randint(len(bias), (n,), generator=generator)
        y = torch.cat([ref[i_ref], bias[i_bias]]).to(device)
        if hi > 0:
            sigma = (torch.rand(2 * n, generator=generator) * math.log(hi / lo) + math.log(lo)).exp().to(device)
        else:
            sigma = torch.zeros(2 * n, device=device)
        x = y + expand_like(sigma, y) * torch.randn(y.shape, generator=generator).to(device)
        label = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
        logit = model.logit(x, sigma).float()
        d = torch.sigmoid(logit)
        acc = float(((d > 0.5).float() == label).float().mean())
        # ECE with 10 equal-width bins of confidence in the predicted class
        conf = torch.where(d > 0.5, d, 1 - d)
        correct = ((d > 0.5).float() == label).float()
        bins = (conf * 10).clamp(max=9.999).long()
        ece = 0.0
        for k in range(10):
            m = bins == k
            if m.any():
                ece += float(m.float().mean() * (conf[m].mean() - correct[m].mean()).abs())
        row = {"sigma_lo": lo, "sigma_hi": hi, "accuracy": acc, "ece": ece,
               "clip_rate": float((logit.abs() > model.logit_max).float().mean())}
        if exact is not None:
            xb, sb = x[n:], sigma[n:]
            lmax = model.logit_max
            log_w_hat = logit[n:].double().clamp(-lmax, lmax)
            log_w = exact.logit(xb.double(), sb.double()).double().clamp(-lmax, lmax)
            w_hat, w = log_w_hat.exp(), log_w.exp()
            row["ratio_mse"] = float(((w_hat - w) ** 2).mean())
            row["ratio_norm"] = float(((w - 1) ** 2).mean())
            row["log_ratio_mse"] = float(((log_w_hat - log_w) ** 2).mean())
            row["log_ratio_norm"] = float((log_w**2).mean())
            if model.time_dependent:
                # what TIW-DSM's target actually uses: the shift σ²∇log w, error in squared norm
                _, g_hat = model.log_ratio_and_grad(xb, sb)
                _, g = exact.log_ratio_and_grad(xb.double(), sb.double())
                s2 = expand_like(sb.double(), g) ** 2
                row["shift_mse"] = float(((s2 * (g_hat.double() - g)) ** 2).flatten(1).sum(1).mean())
                row["shift_norm"] = float(((s2 * g) ** 2).flatten(1).sum(1).mean())
        out.append(row)
    return out
