"""Discriminator guidance on D_obs (the sampling-time use of the ratio; Kim et al., ICML 2023).

A denoiser trained by plain DSM on D_obs estimates E_obs[y|x], with p_obs,σ = π p_data,σ + (1−π) p_bias,σ.
The unbiased denoiser is D_obs + σ²∇log(p_data,σ/p_obs,σ) (METHOD.md §4), and with w_σ = p_data,σ/p_bias,σ

    p_data,σ/p_obs,σ = w_σ / (π w_σ + 1 − π),   ∇log(p_data,σ/p_obs,σ) = ∇log w_σ · (1 − π)/(π w_σ + 1 − π).
"""

from __future__ import annotations

import math

import torch

from baselines.dsm_obs import DSMObs
from tiwbench.diffusion.precond import expand_like


def data_over_obs_log_ratio(log_w: torch.Tensor, ref_share: float) -> torch.Tensor:
    """log(p_data/p_obs) = log w − log(π w + 1 − π), from log w (stable for large |log w|)."""
    pi = float(ref_share)
    if pi <= 0:
        return log_w
    if pi >= 1:
        return torch.zeros_like(log_w)
    return log_w - torch.logaddexp(log_w + math.log(pi), torch.full_like(log_w, math.log1p(-pi)))


def data_over_obs_grad_factor(log_w: torch.Tensor, ref_share: float) -> torch.Tensor:
    """(1 − π)/(π w + 1 − π): the factor that turns ∇log w into ∇log(p_data/p_obs)."""
    pi = float(ref_share)
    if pi <= 0:
        return torch.ones_like(log_w)
    if pi >= 1:
        return torch.zeros_like(log_w)
    return torch.sigmoid(-log_w - math.log(pi / (1 - pi)))


class GuidedDenoiser:
    """D(x; σ) = D_obs(x; σ) + s · σ² ∇log(p_data,σ/p_obs,σ)(x); s = 1 is exact."""

    def __init__(self, net, ratio, ref_share: float, scale: float = 1.0):
        self.net, self.ratio, self.ref_share, self.scale = net, ratio, float(ref_share), float(scale)
        self.sigma_data = getattr(net, "sigma_data", None)

    def correction(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """σ² ∇log(p_data,σ/p_obs,σ)(x)."""
        # the sampler runs in inference mode; a learned ratio needs autograd for ∇ₓ
        with torch.inference_mode(False), torch.enable_grad():
            x, sigma = x.clone(), torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x)).clone()
            log_w, grad = self.ratio.log_ratio_and_grad(x, sigma)
            factor = data_over_obs_grad_factor(log_w.detach(), self.ref_share).to(grad.dtype)
            return (expand_like(sigma.to(grad.dtype) ** 2 * factor, grad) * grad).detach()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        denoised = self.net(x, sigma)
        if self.scale == 0:
            return denoised
        return denoised + (self.scale * self.correction(x, sigma)).to(denoised.dtype)


class DGObs(DSMObs):
    """Plain DSM on D_obs, sampled with its denoiser corrected by the time-dependent ratio between
    p_data and p_obs (discriminator guidance with the reference-vs-bias discriminator). It shares
    dsm_obs's training, so the two differ by the guidance alone."""

    name = "dg_obs"
    sampling_ratio = "time"
    trains_as = "dsm_obs"
    description = "DSM on D_obs sampled with guidance σ²∇log(p_data/p_obs) (scale s; s = 1 exact)"
    defaults = {"scale": 1.0}  # guidance scale s: 0 = dsm_obs, 1 = the exact correction

    def sampling_denoiser(self, net, ratio=None, ref_share: float = 0.0):
        return GuidedDenoiser(net, ratio, ref_share, self.options["scale"])
