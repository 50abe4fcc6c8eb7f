"""Exact Gaussian mixtures (METHOD.md §5): densities, ratios, scores and denoiser in closed form."""

from __future__ import annotations

import math
from typing import Any

import torch

from tiwbench.data.base import BiasedDataset, DataError, Evaluator, Split, contaminated_count, stream_seed


def _sigma_col(sigma, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, dtype=torch.float64).expand(len(x)).reshape(-1, 1)


class GaussianMixture:
    """p = Σ_k π_k N(μ_k, s_k² I); perturbed by σ it is Σ_k π_k N(μ_k, (s_k² + σ²) I)."""

    def __init__(self, means, stds, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(len(self.means)).clone()
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]

    def with_weights(self, weights) -> GaussianMixture:
        return GaussianMixture(self.means, self.stds, weights)

    def log_joint(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log π_k + log N(x; μ_k, (s_k² + σ²) I), shape [N, K]."""
        x = x.to(torch.float64)
        means, stds, weights = (t.to(x.device) for t in (self.means, self.stds, self.weights))
        var = stds**2 + _sigma_col(sigma, x).to(x.device) ** 2  # [N, K]
        d2 = torch.cdist(x, means) ** 2
        return weights.log() - 0.5 * d2 / var - 0.5 * self.dim * (2 * math.pi * var).log()

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return torch.logsumexp(self.log_joint(x, sigma), dim=1)

    def posterior(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return torch.softmax(self.log_joint(x, sigma), dim=1)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """∇_x log p_σ(x) = Σ_k r_k(x) (μ_k − x) / (s_k² + σ²)."""
        x = x.to(torch.float64)
        r = self.posterior(x, sigma)
        var = self.stds.to(x.device) ** 2 + _sigma_col(sigma, x).to(x.device) ** 2
        return torch.einsum("nk,nkd->nd", r / var, self.means.to(x.device)[None] - x[:, None])

    def denoiser(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[y | x] = x + σ² ∇log p_σ(x) (Tweedie)."""
        return x.to(torch.float64) + _sigma_col(sigma, x) ** 2 * self.score(x, sigma)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps, k

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        m = self.mean()
        second = torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        return second - torch.outer(m, m) + (self.weights @ self.stds**2) * torch.eye(self.dim, dtype=torch.float64)


class ExactRatio:
    """Closed-form w_σ = p_σ^data / p_σ^bias for two mixtures with shared components.

    With ``time_dependent=False`` it is the clean ratio w(y) = p^data(y)/p^bias(y), whatever σ.
    """

    kind = "exact"

    def __init__(self, data: GaussianMixture, bias: GaussianMixture, time_dependent: bool = True,
                 logit_max: float = math.log(1e5)):
        self.data, self.bias, self.time_dependent, self.logit_max = data, bias, time_dependent, logit_max
        self.clipped = 0
        self.seen = 0

    def _sigma(self, sigma):
        return sigma if self.time_dependent else 0.0

    def logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat = x.flatten(1)
        s = self._sigma(sigma)
        return (self.data.log_prob(flat, s) - self.bias.log_prob(flat, s)).to(x.dtype)

    def log_ratio(self, x: torch.Tensor, sigma, count: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_ratio_and_grad(x, sigma, count)[0]

    def log_ratio_and_grad(self, x: torch.Tensor, sigma,
                           count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``count``: bool mask of the rows the clip rate counts (all when None)."""
        flat = x.flatten(1)
        s = self._sigma(sigma)
        logit = self.data.log_prob(flat, s) - self.bias.log_prob(flat, s)
        grad = self.data.score(flat, s) - self.bias.score(flat, s)
        if not self.time_dependent:
            grad = torch.zeros_like(grad)
        inside = logit.abs() <= self.logit_max
        count = torch.ones_like(inside) if count is None else count.to(inside.device)
        self.clipped += int((~inside & count).sum())
        self.seen += int(count.sum())
        logit = logit.clamp(-self.logit_max, self.logit_max)
        grad = grad * inside[:, None]
        return logit.to(x.dtype), grad.reshape(x.shape).to(x.dtype)

    @property
    def clip_rate(self) -> float:
        return self.clipped / max(self.seen, 1)

    def log_ratio_at_time(self, x_t: torch.Tensor, t, kernel) -> tuple[torch.Tensor, torch.Tensor]:
        """Unclipped log w_t(x_t) and ∇_{x_t} log w_t of the kernel's x_t = s(t)(y + σ(t)n): the Jacobian
        of the scaling is the same for both classes and cancels, so w_t(x_t) = w_σ(x_t/s) and the
        gradient is ∇log w_σ(x̂)/s (METHOD.md §2a)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        s, sigma = kernel.s(t), kernel.sigma(t)
        flat = x_t.flatten(1).to(torch.float64) / s
        logit = self.data.log_prob(flat, sigma) - self.bias.log_prob(flat, sigma)
        grad = (self.data.score(flat, sigma) - self.bias.score(flat, sigma)) / s
        return logit, grad.reshape(x_t.shape)


class MixtureEvaluator(Evaluator):
    """Raw coordinates for FD (against the exact moments) and the exact posterior for bias."""

    def __init__(self, data: GaussianMixture):
        self.data = data
        self.num_classes = len(data.weights)
        self.target_proportions = data.weights.clone()
        g = torch.Generator().manual_seed(12345)
        x, k = data.sample(20000, g)
        acc = float((self.predict(x) == k).double().mean())
        self.info = {"classifier": "exact posterior", "accuracy": acc}

    def features(self, x):
        return x.flatten(1).to(torch.float64)

    def predict(self, x):
        return self.data.log_joint(x.flatten(1)).argmax(dim=1)

    def target_stats(self):
        return self.data.mean(), self.data.cov()

    def truth_sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Fresh samples of the target, for the finite-sample fd reference level (fd_ref_level)."""
        return self.data.sample(n, generator)[0]


def long_tail_weights(num: int, rho: float) -> torch.Tensor:
    """n_k ∝ ρ^{k/(K−1)}: the head class has 1/ρ times the tail's weight."""
    w = torch.tensor([rho ** (k / (num - 1)) for k in range(num)], dtype=torch.float64)
    return w / w.sum()


class ExactMixtureDataset(BiasedDataset):
    """Vector data whose unbiased and biased distributions are known mixtures (``data_mixture``,
    ``bias_mixture``, set by the subclass): the split draws from them, and the ratios are closed form.
    A ``contamination`` parameter, where the subclass has one, draws that fraction of D_ref from p_bias."""

    kind = "vector"
    data_mixture: Any
    bias_mixture: Any

    def split(self, ref_frac: float, seed: int) -> Split:
        if not 0 < ref_frac:
            raise DataError(f"ref_frac must be > 0, got {ref_frac}")
        n_bias = int(self.params["n_bias"])
        n_ref = max(1, round(ref_frac * n_bias))
        n_cont = contaminated_count(n_ref, float(self.params.get("contamination", 0.0)))
        g = torch.Generator().manual_seed(seed)
        bias, bias_k = self.bias_mixture.sample(n_bias, g)
        ref, ref_k = self.data_mixture.sample(n_ref - n_cont, g)
        if n_cont:
            cont, cont_k = self.bias_mixture.sample(n_cont, g)
            ref, ref_k = torch.cat([ref, cont]), torch.cat([ref_k, cont_k])
        # its own stream: the oracle set is the same whatever ref_frac and contamination are
        oracle, _ = self.data_mixture.sample(int(self.params["n_oracle"]),
                                             torch.Generator().manual_seed(stream_seed(seed, "oracle")))
        f = torch.float32
        return Split(bias.to(f), bias_k, ref.to(f), ref_k, oracle.to(f))

    def exact_ratio(self, time_dependent: bool = True) -> ExactRatio:
        return ExactRatio(self.data_mixture, self.bias_mixture, time_dependent)

    # The family of biases a fitted ceiling estimates (ratios/fitted.py): per-mode weights of both
    # distributions over the truth's components, and, where set, a tilt b inside every mode
    # (each component N(μ_k + Σ_k b, Σ_k), its weight kept; METHOD.md §5a).
    family_has_tilt: bool = False

    def family_components(self):
        """The truth's components with equal weights: the mode posteriors a fitted ceiling uses."""
        return self.data_mixture.with_weights(torch.ones(len(self.data_mixture.weights)))

    def family_truth(self) -> dict[str, Any]:
        """The family's parameters of this dataset: what a fitted ceiling's estimates are compared with."""
        return {"data_weights": self.data_mixture.weights, "bias_weights": self.bias_mixture.weights, "tilt": None}

    def family_ratio(self, data_weights, bias_weights, tilt=None, time_dependent: bool = True) -> ExactRatio:
        """Closed-form w_σ between the truth's components weighted by ``data_weights`` and by
        ``bias_weights``, the latter tilted inside every mode by ``tilt`` (a vector b) where given."""
        bias = self.data_mixture.with_weights(bias_weights)
        if tilt is not None:
            bias = bias.tilted_within(tilt)
        return ExactRatio(self.data_mixture.with_weights(data_weights), bias, time_dependent)

    def empirical_ratio(self, proportions: torch.Tensor, time_dependent: bool = True) -> ExactRatio:
        """w_σ between the truth re-weighted to ``proportions`` (D_ref's) and p_bias."""
        return ExactRatio(self.data_mixture.with_weights(proportions), self.bias_mixture, time_dependent)


class Toy2D(ExactMixtureDataset):
    """8 Gaussian modes on a ring; unbiased weights uniform, biased weights long-tailed."""

    name = "toy2d"
    defaults: dict[str, Any] = {
        "modes": 8,  # mixture components
        "radius": 1.0,  # ring radius
        "std": 0.1,  # component standard deviation
        "rho": 0.05,  # tail/head weight ratio of the biased mixture
        "n_bias": 2000,  # |D_bias|: small, so a 5 % reference set (100 points) is genuinely small
        "n_oracle": 2000,  # unbiased training set of the `oracle` ceiling
        "contamination": 0.0,  # fraction of D_ref drawn from p_bias instead of p_data (a corrupted reference)
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        if p["modes"] < 2 or p["std"] <= 0 or not 0 < p["rho"] <= 1:
            raise DataError(f"toy2d needs modes >= 2, std > 0 and 0 < rho <= 1; got {p}")
        contaminated_count(1, float(p["contamination"]))  # in [0, 1], or a one-line error
        ang = torch.arange(p["modes"], dtype=torch.float64) * 2 * math.pi / p["modes"]
        means = p["radius"] * torch.stack([ang.cos(), ang.sin()], dim=1)
        self.data_mixture = GaussianMixture(means, p["std"], torch.ones(p["modes"]))
        self.bias_mixture = self.data_mixture.with_weights(long_tail_weights(p["modes"], p["rho"]))
        self.shape = (2,)
        self.num_classes = p["modes"]
        self.sigma_data = float(self.data_mixture.cov().diagonal().mean().sqrt())

    def evaluator(self, cache_dir=None, device="cpu") -> Evaluator:
        return MixtureEvaluator(self.data_mixture)

