"""`gmm`: a high-dimensional exact mixture, components near low-rank subspaces (METHOD.md §5a).

Each component is N(μ_k, A_k A_kᵀ + ε² I) with A_k of shape d×r. Perturbed by σ it is
N(μ_k, A_k A_kᵀ + c I), c = ε² + σ²; with A_k = B_k V_kᵀ (B_k's columns orthogonal, squared norms λ_k)
the inverse and the log-determinant are O(d·r) per point (Woodbury, determinant lemma), never d×d.

Two kinds of bias: long-tailed component weights (as CIFAR-10 LT), and an exponential tilt inside every
mode: each component tilted by exp(β uᵀx) and renormalised on its own, N(μ_k + β Σ_k u, Σ_k), keeping
the weight the dataset states. So the densities, scores, denoisers and w_σ stay closed form. (Tilting
the whole mixture, p · exp(β uᵀx), would also move mass between modes, a label bias: ``tilted``.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tiwbench.data.base import DataError, Evaluator, stream_seed
from tiwbench.data.mixtures import ExactMixtureDataset, MixtureEvaluator, long_tail_weights


def _c_col(sigma, x: torch.Tensor, eps2: float) -> torch.Tensor:
    """c = ε² + σ² per row, shape [N, 1]."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(len(x)).reshape(-1, 1)
    return eps2 + s**2


class LowRankMixture:
    """p = Σ_k π_k N(μ_k, A_k A_kᵀ + ε² I): the interface of ``GaussianMixture`` (log_joint, log_prob,
    posterior, score, denoiser, sample, mean, cov), so ``ExactRatio`` and ``MixtureEvaluator`` take it."""

    def __init__(self, means, factors, eps: float, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, d]
        self.factors = torch.as_tensor(factors, dtype=torch.float64)  # [K, d, r]
        self.eps = float(eps)
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]
        # A_k = B_k V_kᵀ: B_k's columns are orthogonal with squared norms λ_k (eigenvalues of A_kᵀA_k)
        lam, vec = torch.linalg.eigh(self.factors.transpose(1, 2) @ self.factors)
        self.lam = lam.clamp_min(0.0)  # [K, r]
        self.basis = self.factors @ vec  # [K, d, r]

    def with_weights(self, weights) -> LowRankMixture:
        return LowRankMixture(self.means, self.factors, self.eps, weights)

    def _terms(self, x: torch.Tensor, sigma):
        """c [N,1], the projections δ_kᵀB_k [N,K,r] and the shrink 1/(c + λ) [N,K,r] of every component."""
        x = x.to(torch.float64)
        c = _c_col(sigma, x, self.eps**2)
        means, basis, lam = (t.to(x.device) for t in (self.means, self.basis, self.lam))
        proj = torch.einsum("nd,kdr->nkr", x, basis) - torch.einsum("kd,kdr->kr", means, basis)[None]
        shrink = 1.0 / (c[:, :, None] + lam[None])
        return x, c, proj, shrink

    def log_joint(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log π_k + log N(x; μ_k, A_kA_kᵀ + (ε² + σ²) I), shape [N, K]."""
        x, c, proj, shrink = self._terms(x, sigma)
        d2 = torch.cdist(x, self.means.to(x.device)) ** 2  # ‖δ_k‖²
        # δᵀ(AAᵀ + cI)⁻¹δ = (‖δ‖² − Σ_j (δᵀb_j)² / (c + λ_j)) / c
        quad = (d2 - (proj**2 * shrink).sum(-1)) / c
        # log det = (d − r) log c + Σ_j log(c + λ_j)
        r = self.lam.shape[1]
        logdet = (self.dim - r) * c.log() - shrink.log().sum(-1)
        return self.weights.to(x.device).log() - 0.5 * quad - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return torch.logsumexp(self.log_joint(x, sigma), dim=1)

    def posterior(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return torch.softmax(self.log_joint(x, sigma), dim=1)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """∇ log p_σ(x) = −Σ_k r_k (Σ_k + σ²I)⁻¹ δ_k = −Σ_k r_k (δ_k − B_k (shrink · B_kᵀδ_k)) / c."""
        x, c, proj, shrink = self._terms(x, sigma)
        r = self.posterior(x, sigma)
        mean_delta = x - r @ self.means.to(x.device)  # Σ_k r_k δ_k
        back = torch.einsum("nk,kdr,nkr->nd", r, self.basis.to(x.device), proj * shrink)
        return -(mean_delta - back) / c

    def denoiser(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[y | x] = x + σ² ∇log p_σ(x) (Tweedie)."""
        s = torch.as_tensor(sigma, dtype=torch.float64).expand(len(x)).reshape(-1, 1)
        return x.to(torch.float64) + s**2 * self.score(x, sigma)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.factors.shape[2], generator=generator, dtype=torch.float64)
        e = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + torch.einsum("ndr,nr->nd", self.factors[k], z) + self.eps * e, k

    def component_cov(self) -> torch.Tensor:
        """Σ_k = A_k A_kᵀ + ε² I, [K, d, d] (for the moments; d×d only here)."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return self.factors @ self.factors.transpose(1, 2) + self.eps**2 * eye

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """C = Σ π_k (Σ_k + μ_k μ_kᵀ) − m mᵀ."""
        m = self.mean()
        second = torch.einsum("k,kde->de", self.weights, self.component_cov())
        second = second + torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        return second - torch.outer(m, m)

    def cov_times(self, b: torch.Tensor) -> torch.Tensor:
        """Σ_k b = A_k(A_kᵀb) + ε² b for every component, [K, d] (O(d·r))."""
        b = torch.as_tensor(b, dtype=torch.float64)
        return torch.einsum("kdr,kr->kd", self.factors, self.factors.transpose(1, 2) @ b) + self.eps**2 * b

    def tilted_within(self, b: torch.Tensor) -> LowRankMixture:
        """Every component tilted by exp(bᵀx) and renormalised on its own: N(μ_k + Σ_k b, Σ_k) with its
        weight π_k unchanged, so the tilt moves no mass between modes (METHOD.md §5a)."""
        return LowRankMixture(self.means + self.cov_times(b), self.factors, self.eps, self.weights)

    def tilted(self, beta: float, u: torch.Tensor) -> LowRankMixture:
        """The whole mixture tilted, p · exp(β uᵀx) normalised: components N(μ_k + β Σ_k u, Σ_k) with
        weights ∝ π_k exp(β uᵀμ_k + β² uᵀΣ_k u/2), i.e. also a label bias. No dataset uses it."""
        u = torch.as_tensor(u, dtype=torch.float64)
        sigma_u = self.cov_times(u)  # Σ_k u
        log_w = self.weights.log() + beta * (self.means @ u) + 0.5 * beta**2 * (sigma_u @ u)
        return LowRankMixture(self.means + beta * sigma_u, self.factors, self.eps, torch.softmax(log_w, 0))


def gmm_geometry(dim: int, modes: int, rank: int, scale: float, spread: float, seed: int):
    """Means of norm ``scale`` in random directions; A_k = spread · (an orthonormal d×r frame); a unit u."""
    g = torch.Generator().manual_seed(stream_seed(seed, "gmm-geometry"))
    means = torch.randn(modes, dim, generator=g, dtype=torch.float64)
    means = scale * means / means.norm(dim=1, keepdim=True)
    frames = torch.linalg.qr(torch.randn(modes, dim, rank, generator=g, dtype=torch.float64))[0]
    u = torch.randn(dim, generator=g, dtype=torch.float64)
    return means, spread * frames, u / u.norm()


class GMMEvaluator(MixtureEvaluator):
    """The exact posterior of the true mixture (bias) and raw coordinates (fd); plus the tilt direction,
    for the within-mode shift metric."""

    def __init__(self, data: LowRankMixture, tilt_direction: torch.Tensor):
        super().__init__(data)
        self.tilt_direction = tilt_direction

    def tilt_shift(self, x: torch.Tensor) -> tuple[float, list[float]]:
        """Per component, the posterior-weighted mean of uᵀx minus uᵀμ_k, in units of sqrt(uᵀΣ_k u);
        returns the posterior-weighted rms over components and the per-component shifts."""
        x = x.flatten(1).to(torch.float64)
        u = self.tilt_direction
        r = self.data.posterior(x)
        mass = r.sum(0)
        ux = x @ u
        mean_u = (r * ux[:, None]).sum(0) / mass.clamp_min(1e-12)
        at_u = self.data.factors.transpose(1, 2) @ u
        sd = ((at_u**2).sum(1) + self.data.eps**2).sqrt()
        shift = (mean_u - self.data.means @ u) / sd
        share = mass / mass.sum()
        return float((share * shift**2).sum().sqrt()), shift.tolist()


class GMM(ExactMixtureDataset):
    """K modes near rank-r subspaces of R^d; D_bias long-tailed over modes and/or tilted along u."""

    name = "gmm"
    defaults: dict[str, Any] = {
        "dim": 16,  # data dimension d
        "modes": 8,  # mixture components K
        "rank": 3,  # rank r of each component's subspace (capped at d)
        "spread": 0.5,  # std along the subspace directions
        "eps": 0.1,  # isotropic std off the subspace
        "scale": 1.5,  # norm of the means
        "rho": 0.01,  # tail/head weight ratio of D_bias (1: no label bias)
        "tilt": 0.0,  # β of the within-mode tilt exp(β uᵀx) of D_bias's components (0: none)
        "geometry_seed": 0,  # the means, frames and u; fixed across the split seeds
        "n_bias": 10000,  # |D_bias|, as the paper's CIFAR-10 LT
        "n_oracle": 10000,  # unbiased training set of the `oracle` ceiling
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        if p["dim"] < 1 or p["modes"] < 2 or p["rank"] < 1:
            raise DataError(f"gmm needs dim >= 1, modes >= 2 and rank >= 1; got {p}")
        if p["eps"] <= 0 or p["spread"] < 0 or not 0 < p["rho"] <= 1 or p["n_bias"] < 1 or p["n_oracle"] < 1:
            raise DataError(f"gmm needs eps > 0, spread >= 0, 0 < rho <= 1, n_bias, n_oracle >= 1; got {p}")
        rank = min(p["rank"], p["dim"])  # so that one suite can sweep dim down to 1
        means, factors, self.tilt_direction = gmm_geometry(p["dim"], p["modes"], rank, p["scale"],
                                                           p["spread"], p["geometry_seed"])
        self.data_mixture = LowRankMixture(means, factors, p["eps"], torch.ones(p["modes"]))
        label_biased = self.data_mixture.with_weights(long_tail_weights(p["modes"], p["rho"]))
        # the tilt inside every mode: D_bias's mode weights stay the long-tailed ones (uniform when ρ = 1)
        self.bias_mixture = label_biased.tilted_within(float(p["tilt"]) * self.tilt_direction)
        self.shape = (p["dim"],)
        self.num_classes = p["modes"]
        self.sigma_data = float(self.data_mixture.cov().diagonal().mean().sqrt())

    family_has_tilt = True  # a fitted ceiling estimates the tilt vector b = βu as well as the mode weights

    def family_truth(self) -> dict[str, Any]:
        return {**super().family_truth(), "tilt": float(self.params["tilt"]) * self.tilt_direction}

    def evaluator(self, cache_dir=None, device="cpu") -> Evaluator:
        return GMMEvaluator(self.data_mixture, self.tilt_direction)


class GMMTilt(GMM):
    """`gmm` with the within-mode tilt as its only bias: D_bias's mode weights are uniform, as the truth's,
    and each of its components is N(μ_k + β Σ_k u, Σ_k), β = 1."""

    name = "gmm_tilt"
    defaults = {**GMM.defaults, "rho": 1.0, "tilt": 1.0}
