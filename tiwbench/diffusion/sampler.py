"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 2) with per-sample seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def per_sample_latents(seeds: Sequence[int], shape: tuple[int, ...], device="cpu") -> torch.Tensor:
    """One generator per sample, so a sample depends on its seed only, never on batch size."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        out[i] = torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
    return out.to(device)


def edm_time_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0, device="cpu", dtype=torch.float64) -> torch.Tensor:
    i = torch.arange(num_steps, dtype=dtype, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])  # t_N = 0


@torch.inference_mode()
def edm_sampler(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # denoiser D(x; σ)
    latents: torch.Tensor,  # standard normal, [B, ...]
    num_steps: int = 18,  # 18 steps = 35 network evaluations (EDM, CIFAR-10)
    sigma_min: float = 0.002,  # lowest noise level
    sigma_max: float = 80.0,  # highest noise level
    rho: float = 7.0,  # time-step exponent
    callback: Callable[[int, torch.Tensor], None] | None = None,  # called after each step
    dtype: str = "float32",  # the denoiser's precision: "bfloat16" runs it under autocast
) -> torch.Tensor:
    t_steps = edm_time_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device)
    x_next = latents.to(torch.float64) * t_steps[0]
    ones = torch.ones(len(latents), device=latents.device, dtype=torch.float64)
    io_dtype = latents.dtype
    low = dtype == "bfloat16"

    def d(x, t):  # dx/dt = (x − D(x; t)) / t; the ODE state stays in float64 whatever the net's precision
        with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=low):
            denoised = net(x.to(io_dtype), (t * ones).to(io_dtype))
        return (x - denoised.to(torch.float64)) / t

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        d_cur = d(x_cur, t_cur)
        x_next = x_cur + (t_next - t_cur) * d_cur  # Euler step
        if i < num_steps - 1:  # 2nd-order correction, except into σ = 0
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d(x_next, t_next))
        if callback is not None:
            callback(i, x_next)
    return x_next.to(io_dtype)


@torch.inference_mode()
def kernel_sampler(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # denoiser D(x̂; σ) on x̂ = x/s
    latents: torch.Tensor,  # standard normal, [B, ...]
    kernel,  # a tiwbench.diffusion.kernels.Kernel: s(t), σ(t) and the time steps
    num_steps: int = 18,  # 2·steps − 1 network evaluations
    callback: Callable[[int, torch.Tensor], None] | None = None,  # called after each step (on x̂)
    dtype: str = "float32",  # the denoiser's precision: "bfloat16" runs it under autocast
) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 1 (deterministic Heun) for x_t = s(t)(y + σ(t)n):
    dx/dt = (σ'/σ + s'/s) x − (σ' s / σ) D(x/s; σ). Returns x̂ at t_N = 0 (where s = 1 for every kernel)."""
    t_steps = kernel.time_steps(num_steps, device=latents.device)
    sig, sc = kernel.sigma(t_steps), kernel.s(t_steps)
    dsig, dsc = kernel.sigma_deriv(t_steps[:-1]), kernel.s_deriv(t_steps[:-1])
    x_next = latents.to(torch.float64) * (sig[0] * sc[0])
    ones = torch.ones(len(latents), device=latents.device, dtype=torch.float64)
    io_dtype = latents.dtype
    low = dtype == "bfloat16"

    def d(x, s, sigma, ds, dsigma):
        with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=low):
            denoised = net((x / s).to(io_dtype), (sigma * ones).to(io_dtype)).to(torch.float64)
        return (dsigma / sigma + ds / s) * x - dsigma * s / sigma * denoised

    for i in range(num_steps):
        x_cur = x_next
        d_cur = d(x_cur, sc[i], sig[i], dsc[i], dsig[i])
        x_next = x_cur + (t_steps[i + 1] - t_steps[i]) * d_cur  # Euler step
        if i < num_steps - 1:  # 2nd-order correction, except into σ = 0
            d_prime = d(x_next, sc[i + 1], sig[i + 1], dsc[i + 1], dsig[i + 1])
            x_next = x_cur + (t_steps[i + 1] - t_steps[i]) * (0.5 * d_cur + 0.5 * d_prime)
        if callback is not None:
            callback(i, x_next / sc[i + 1])
    return (x_next / sc[-1]).to(io_dtype)
