"""Perturbation kernels in Karras et al.'s (2022) unified form (METHOD.md §2a): x_t = s(t) (y + σ(t) n).

A kernel gives the scale s(t) and noise level σ(t), the training distribution of noise levels, the
loss weight λ(σ), the preconditioning (c_skip, c_out, c_in, c_noise) and the sampler's time steps.
The harness works in the scaled-out variable x̂ = x_t / s(t) = y + σ n throughout, as Karras et al.'s
ODE evaluates D(x/s; σ): there the perturbed marginal at a given σ is the same for every kernel, so
datasets, ratio models and losses take (x̂, σ), and only the sampler sees s(t). Registered in
``tiwbench.registry.KERNELS`` (entry-point group ``tiwbench.kernels``); schedule parameters are
config values (``Budget.kernel``), checked against ``defaults``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from tiwbench.config import like_default


def _t(x, like: torch.Tensor | None = None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64 if like is None else like.dtype,
                           device=None if like is None else like.device)


class Kernel(ABC):
    """Base class: subclasses set ``name``, ``defaults`` and the abstract functions of t below."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} of kernel {self.name!r}; "
                             f"allowed: {sorted(self.defaults)}")
        for key, value in params.items():
            try:
                params[key] = like_default(value, self.defaults[key])
            except TypeError as e:
                raise TypeError(f"parameter {key!r} of kernel {self.name!r} {e}") from None
        self.params = {**self.defaults, **params}

    # -- the perturbation ------------------------------------------------------------------
    def s(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def s_deriv(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    @abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def sigma_deriv(self, t: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t of a noise level σ."""

    def perturb(self, y: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = s(t) (y + σ(t) n)."""
        t = _t(t, y).expand(len(y)).reshape(-1, *([1] * (y.ndim - 1)))
        return self.s(t) * (y + self.sigma(t) * noise)

    # -- training ----------------------------------------------------------------------------
    @abstractmethod
    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        """σ of n training samples."""

    def loss_weight(self, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
        """λ(σ): 1/σ² makes VP's and VE's loss their usual noise-prediction loss (Karras et al., Table 1)."""
        return 1 / sigma**2

    @abstractmethod
    def precond(self, sigma: torch.Tensor, sigma_data: float):
        """(c_skip, c_out, c_in, c_noise), each of the shape of σ."""

    # -- sampling -----------------------------------------------------------------------------
    @abstractmethod
    def time_steps(self, num_steps: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
        """t_0 > … > t_{N−1}, then t_N = 0."""

    def sigma_range(self, num_steps: int = 18) -> tuple[float, float]:
        """The lowest positive and the highest σ the sampler visits (the ratio models train over it)."""
        t = self.time_steps(num_steps)
        sig = self.sigma(t[:-1])
        return float(sig.min()), float(sig.max())


class EDM(Kernel):
    """σ(t) = t, s = 1, ln σ ~ N(P_mean, P_std²), EDM's preconditioning and ρ-spaced steps."""

    name = "edm"
    description = "EDM (Karras et al. 2022): σ(t) = t, s = 1, ln σ ~ N(P_mean, P_std²)"
    defaults = {"p_mean": -1.2, "p_std": 1.2}
    # its sampler's range and spacing are the sample config's (sample.sigma_min, sigma_max, rho)
    sigma_min, sigma_max, rho = 0.002, 80.0, 7.0

    def sigma(self, t):
        return t

    def sigma_deriv(self, t):
        return torch.ones_like(t)

    def sigma_inv(self, sigma):
        return sigma

    def sample_sigma(self, n, generator=None, device="cpu"):
        # the same draws as tiwbench.diffusion.losses.sample_sigma, so edm keeps every number
        p = self.params
        return (torch.randn(n, generator=generator, device=device) * p["p_std"] + p["p_mean"]).exp()

    def loss_weight(self, sigma, sigma_data):
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2

    def precond(self, sigma, sigma_data):
        sd2 = sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def time_steps(self, num_steps, dtype=torch.float64, device="cpu"):
        i = torch.arange(num_steps, dtype=dtype, device=device)
        lo, hi, rho = self.sigma_min, self.sigma_max, self.rho
        t = (hi ** (1 / rho) + i / (num_steps - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        return torch.cat([t, torch.zeros_like(t[:1])])


class VP(Kernel):
    """Song et al.'s VP SDE dx = −½β(t) x dt + √β(t) dw with linear β: s = e^{−B/2}, σ = √(e^B − 1),
    B(t) = β_min t + ½(β_max − β_min) t²; t uniform on [ε_t, 1]; ε-prediction preconditioning."""

    name = "vp"
    description = "VP SDE (Song et al. 2021): s = exp(−B/2), σ = sqrt(exp(B) − 1), t ~ U[ε_t, 1]"
    # Song et al.'s β₀ = 0.1, β₁ = 20: B(1) = 10.05, σ(1) = √(e^10.05 − 1) ≈ 152.2 (Karras et al.'s Table 1
    # writes the same schedule as β_d = β_max − β_min = 19.9, β_min = 0.1)
    defaults = {"beta_min": 0.1, "beta_max": 20.0, "eps_t": 1e-3}

    def B(self, t):
        p = self.params
        return p["beta_min"] * t + 0.5 * (p["beta_max"] - p["beta_min"]) * t**2

    def beta(self, t):
        p = self.params
        return p["beta_min"] + (p["beta_max"] - p["beta_min"]) * t

    def B_inv(self, b):
        p = self.params
        d = p["beta_max"] - p["beta_min"]
        if d == 0:
            return b / p["beta_min"]
        return (-p["beta_min"] + (p["beta_min"] ** 2 + 2 * d * b).sqrt()) / d

    def s(self, t):
        return (-0.5 * self.B(t)).exp()

    def s_deriv(self, t):
        return -0.5 * self.beta(t) * self.s(t)

    def sigma(self, t):
        return torch.expm1(self.B(t)).sqrt()

    def sigma_deriv(self, t):
        return 0.5 * self.beta(t) * self.B(t).exp() / self.sigma(t)

    def sigma_inv(self, sigma):
        return self.B_inv(torch.log1p(sigma**2))

    def sample_sigma(self, n, generator=None, device="cpu"):
        eps = self.params["eps_t"]
        t = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * (1 - eps) + eps
        return self.sigma(t).float()

    def precond(self, sigma, sigma_data):
        # Karras et al. Table 1: D = x̂ − σ F(x̂/√(σ²+1)), i.e. F predicts the noise n from x_t itself.
        # c_noise: t rather than their (M−1)t, which suits DDPM's integer-step embedding, not the
        # Fourier features of the MLPs here (they expect O(1) inputs).
        return (torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(),
                self.sigma_inv(sigma.double()).to(sigma.dtype))

    def time_steps(self, num_steps, dtype=torch.float64, device="cpu"):
        eps = self.params["eps_t"]
        i = torch.arange(num_steps, dtype=dtype, device=device)
        t = 1 + i / (num_steps - 1) * (eps - 1)
        return torch.cat([t, torch.zeros_like(t[:1])])


class SubVP(VP):
    """Song et al.'s sub-VP SDE dx = −½β x dt + √(β(1 − e^{−2B})) dw: the VP mean, variance
    (1 − e^{−B})², so s = e^{−B/2} and σ = (1 − e^{−B}) / s = 2 sinh(B/2)."""

    name = "subvp"
    description = "sub-VP SDE (Song et al. 2021): s = exp(−B/2), σ = 2 sinh(B/2), t ~ U[ε_t, 1]"

    def sigma(self, t):
        return 2 * torch.sinh(0.5 * self.B(t))

    def sigma_deriv(self, t):
        return self.beta(t) * torch.cosh(0.5 * self.B(t))

    def sigma_inv(self, sigma):
        return self.B_inv(2 * torch.asinh(sigma / 2))

    def precond(self, sigma, sigma_data):
        # as VP, with the input x_t = s·x̂ of Song et al.'s network: s = exp(−B/2) = 1/(σ/2 + √(σ²/4 + 1))
        c_in = 1 / (sigma / 2 + (sigma**2 / 4 + 1).sqrt())
        return (torch.ones_like(sigma), -sigma, c_in, self.sigma_inv(sigma.double()).to(sigma.dtype))


class VE(Kernel):
    """Song et al.'s VE SDE dx = √(dσ²/dt) dw in Karras et al.'s form: s = 1, σ(t) = √t; training
    σ log-uniform on [σ_min, σ_max]; steps geometric in σ² (Karras et al., Table 1)."""

    name = "ve"
    description = "VE SDE (Song et al. 2021): s = 1, σ = sqrt(t), σ log-uniform on [σ_min, σ_max]"
    defaults = {"sigma_min": 0.02, "sigma_max": 100.0}

    def sigma(self, t):
        return t.sqrt()

    def sigma_deriv(self, t):
        return 0.5 / t.sqrt()

    def sigma_inv(self, sigma):
        return sigma**2

    def sample_sigma(self, n, generator=None, device="cpu"):
        lo, hi = math.log(self.params["sigma_min"]), math.log(self.params["sigma_max"])
        return (torch.rand(n, generator=generator, device=device) * (hi - lo) + lo).exp()

    def precond(self, sigma, sigma_data):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()

    def time_steps(self, num_steps, dtype=torch.float64, device="cpu"):
        lo2, hi2 = self.params["sigma_min"] ** 2, self.params["sigma_max"] ** 2
        i = torch.arange(num_steps, dtype=dtype, device=device)
        t = hi2 * (lo2 / hi2) ** (i / (num_steps - 1))
        return torch.cat([t, torch.zeros_like(t[:1])])


class RF(Kernel):
    """Flow matching with the linear interpolant (rectified flow) x_t = (1 − t) y + t n: s(t) = 1 − t,
    σ(t) = t/(1 − t) (METHOD.md §9); t uniform on [ε_t, 1 − ε_t]. The network predicts the velocity
    n − y from x_t = x̂/(1 + σ) and t: D(x̂; σ) = x_t − t F(x_t, t), so λ(σ) = 1/t² makes the loss
    flow matching's ‖F − (n − y)‖². Sampled by the probability-flow ODE dx/dt = (x − D)/t (Heun on t)."""

    name = "rf"
    description = "flow matching, linear interpolant: s = 1 − t, σ = t/(1 − t), t ~ U[ε_t, 1 − ε_t]"
    defaults = {"eps_t": 1e-3}

    def s(self, t):
        return 1 - t

    def s_deriv(self, t):
        return -torch.ones_like(t)

    def sigma(self, t):
        return t / (1 - t)

    def sigma_deriv(self, t):
        return 1 / (1 - t) ** 2

    def sigma_inv(self, sigma):
        return sigma / (1 + sigma)

    def sample_sigma(self, n, generator=None, device="cpu"):
        eps = self.params["eps_t"]
        t = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * (1 - 2 * eps) + eps
        return self.sigma(t).float()

    def loss_weight(self, sigma, sigma_data):
        return ((1 + sigma) / sigma) ** 2  # 1/t²

    def precond(self, sigma, sigma_data):
        t = sigma / (1 + sigma)
        return 1 - t, -t, 1 - t, t  # c_skip = s, c_out = −t, c_in = s (the network sees x_t), c_noise = t

    def time_steps(self, num_steps, dtype=torch.float64, device="cpu"):
        eps = self.params["eps_t"]
        i = torch.arange(num_steps, dtype=dtype, device=device)
        t = (1 - eps) + i / (num_steps - 1) * (2 * eps - 1)  # uniform from 1 − ε_t down to ε_t
        return torch.cat([t, torch.zeros_like(t[:1])])


def make_kernel(name: str = "edm", params: dict[str, dict[str, Any]] | None = None) -> Kernel:
    """The registered kernel ``name`` with its schedule parameters from ``params[name]`` (a Budget's
    ``kernel`` section: kernel name -> parameters)."""
    from tiwbench.registry import KERNELS

    return KERNELS.get(name)(**dict((params or {}).get(name, {})))


def is_edm(kernel: Kernel | None) -> bool:
    """None stands for EDM with its defaults: the code paths that predate kernels, kept bit for bit."""
    return kernel is None or (kernel.name == "edm" and kernel.params == EDM.defaults)
