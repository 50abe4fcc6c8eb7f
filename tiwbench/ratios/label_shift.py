"""`label_shift` and `class_posterior`: w_σ from the ratio's structure under class bias (METHOD.md §10).

Under label bias p_data = Σ_k q_k p(·|k) and p_bias = Σ_k p_k p(·|k), so
    w_σ(x) = Σ_k (q_k / p_k) P_bias(k | x_σ = x),
    ∇ₓ log w_σ = Σ_k (q_k/p_k) ∇ₓP_bias(k | x) / Σ_k (q_k/p_k) P_bias(k | x):
a noise-conditional posterior of the *biased* mixture, learnable from all of D_bias, and K numbers q_k/p_k,
the only part that needs D_ref. Both estimators build the model from these two parts (:class:`PosteriorRatio`,
through :func:`label_shift_ratio`); they differ in where the classes come from.

- ``label_shift`` (a practitioner's estimator: no labels). Vectors: a full-covariance Gaussian mixture
  (scikit-learn) fitted to D_obs = D_bias ∪ D_ref stands in for the classes; perturbed by σ each component is
  N(μ_k, Σ_k + σ²I), so the posterior is closed form at every σ. Its weights are set to p̂ (D_bias's) before it
  is used as P_bias(k | x): the mixture of D_obs has D_obs's proportions, not p_bias's (§10). Images: k-means on
  the observed-data denoiser's features at the smallest σ gives cluster ids, and a noise-conditional classifier
  of them (a head on that frozen trunk, as `trunk`'s) trained by cross-entropy on perturbed D_bias is P_bias.
- ``class_posterior`` (its labelled twin, a ceiling): the true class labels instead of clusters. Vectors: one
  full-covariance Gaussian per class fitted on D_bias (for Gaussian classes, the truth's components up to
  sampling error: exactly `exact_empirical` given the true ones), p from D_bias's labels, q̂ from D_ref's
  labels. Images: the noise-conditional classifier trained on D_bias's labels.

K: vectors, by held-out log-likelihood over multiples of the number of classes (:func:`choose_components`);
images, ``IMAGE_K_FACTOR`` × the classes, fixed (k-means has no likelihood to hold out, and over-clustering is the
safe error, §10).

Priors (``label_shift``): maximum-likelihood label shift (Saerens et al. 2002) on the σ = 0 class likelihoods
L_ik (a component's log-density, or a classifier's log P_bias(k|x_i) − log p̂_k at its least noise, equal up to
a per-point constant): π ← (Σ_i softmax_k(L_ik + log π_k) + Kα c_k) / (n + Kα), from the mixture's own weights.
p̂ on D_bias takes no prior (10,000 points). For q̂ the Dirichlet prior of Kα pseudo-counts is centred on p̂
(c = p̂): it keeps a cluster that no reference point reaches from q̂_k = 0, i.e. w = 0 on it, and shrinks the
ratio toward 1 (no correction), not toward uniform classes, which would be a prior toward the truth on
datasets whose unbiased classes are balanced (all of these). α is chosen by 5-fold cross-validation of D_ref's
log-likelihood Σ_i log Σ_k q̂_k exp(L_ik) over ``ALPHA_GRID`` (0 included; ties: the smaller α). A cluster with
no reference point is invisible to that cross-validation, so α = 0 can win where the prior matters most: the
record keeps each α's score.

Diagnostics (``info``; the labels are read here only, never by the fit): ``purity``, the share of D_obs points
whose cluster's (σ = 0 argmax) majority true class is their own class; ``prior_ratio_error``, over the true
classes c present in both sets, the rms of log ŵ_c − log(q_c/p_c), where ŵ_c is the mean of the fitted clean
ratio ŵ(x) over D_obs's points of class c and q_c, p_c are D_ref's and D_bias's label shares.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tiwbench.data.base import DataError
from tiwbench.diffusion.losses import device_generator
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import expand_like
from tiwbench.ratios.discriminator import LearnedRatio, draw_ratio_sigma, optimise, train_ratio
from tiwbench.ratios.estimators import Discriminator, RatioEstimator, observed_denoiser

# the number of components: these multiples of the number of classes, chosen by held-out log-likelihood
K_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
# restarts of each fit (scikit-learn keeps the best): under long-tailed weights k-means' starts merge head modes
# and split none; on gmm (8 modes, 10,500 points) 3 restarts at K = 8 reached purity 0.96, 10 found every mode
N_INIT = 10
REG_COVAR = 1e-6  # added to every covariance's diagonal (scikit-learn's default), so Σ_k stays invertible
ALPHA_GRID = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)  # the Dirichlet pseudo-count per cluster
ALPHA_DEFAULT = 1.0  # where D_ref is too small to cross-validate
CV_FOLDS = 5


# -- mixtures with full covariances ------------------------------------------------------------------------------


def _sigma_col(sigma, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(len(x)).reshape(-1, 1)


class FullCovMixture:
    """p = Σ_k π_k N(μ_k, Σ_k) with full covariances; perturbed by σ, Σ_k + σ²I. Each Σ_k = U_k diag(λ_k) U_kᵀ is
    decomposed once, so a σ per row costs projections only: (Σ_k + σ²I)⁻¹ = U_k diag(1/(λ_k + σ²)) U_kᵀ."""

    def __init__(self, means, covs, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, d]
        self.covs = torch.as_tensor(covs, dtype=torch.float64)  # [K, d, d]
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]
        lam, self.basis = torch.linalg.eigh(self.covs)
        self.lam = lam.clamp_min(0.0)  # [K, d]

    def with_weights(self, weights) -> FullCovMixture:
        return FullCovMixture(self.means, self.covs, weights)

    def log_joint(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log π_k + log N(x; μ_k, Σ_k + σ²I), shape [N, K]; differentiable in x."""
        x = x.to(torch.float64)
        means, basis, lam, weights = (t.to(x.device) for t in (self.means, self.basis, self.lam, self.weights))
        var = lam[None] + _sigma_col(sigma, x)[:, :, None] ** 2  # [N, K, d]
        proj = torch.einsum("nd,kde->nke", x, basis) - torch.einsum("kd,kde->ke", means, basis)[None]
        quad = (proj**2 / var).sum(-1)
        logdet = var.log().sum(-1)
        return weights.log() - 0.5 * quad - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return torch.logsumexp(self.log_joint(x, sigma), dim=1)

    def posterior(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return torch.softmax(self.log_joint(x, sigma), dim=1)


class MixturePosterior:
    """log P(k | x_σ = x) of a mixture perturbed by σ: its own weights are the prior."""

    def __init__(self, mixture):
        self.mixture = mixture

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return torch.log_softmax(self.mixture.log_joint(x.flatten(1).to(torch.float64), sigma), dim=1)


# -- the ratio from a posterior and the prior ratios -------------------------------------------------------------


class PosteriorRatio:
    """log w_σ(x) = log Σ_k (q_k/p_k) P_bias(k | x_σ = x), in float64, ∇ₓ by autograd; ``log_posterior(x, σ)``
    returns log P_bias(k | x_σ = x), [N, K] (a mixture's; :class:`ClassifierRatio` for a network's). The
    interface of every ratio model: ``logit``, ``log_ratio`` and ``log_ratio_and_grad`` clipped at ±``logit_max``
    (the gradient zero where the clip binds, as the clipped function is flat there), and the clip counters.
    Clean (``time_dependent=False``): the same at σ = 0, with no correction."""

    kind = "label_shift"

    def __init__(self, log_posterior, log_prior_ratio: torch.Tensor, time_dependent: bool = True,
                 logit_max: float = math.log(1e5)):
        self.log_posterior = log_posterior
        self.log_prior_ratio = torch.as_tensor(log_prior_ratio, dtype=torch.float64)
        self.time_dependent, self.logit_max = time_dependent, logit_max
        self.clipped = 0
        self.seen = 0

    def _sigma(self, sigma):
        return sigma if self.time_dependent else 0.0

    def _log_w(self, x: torch.Tensor, sigma) -> torch.Tensor:
        log_post = self.log_posterior(x, self._sigma(sigma)).to(torch.float64)
        return torch.logsumexp(log_post + self.log_prior_ratio.to(log_post.device), dim=1)

    def logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self._log_w(x.to(torch.float64), sigma).to(x.dtype)

    def _clip(self, logit: torch.Tensor, count: torch.Tensor | None):
        inside = logit.abs() <= self.logit_max
        count = torch.ones_like(inside) if count is None else count.to(inside.device)
        self.clipped += int((~inside & count).sum())
        self.seen += int(count.sum())
        return logit.clamp(-self.logit_max, self.logit_max), inside

    @torch.no_grad()
    def log_ratio(self, x: torch.Tensor, sigma, count: torch.Tensor | None = None) -> torch.Tensor:
        return self._clip(self._log_w(x.to(torch.float64), sigma), count)[0].to(x.dtype)

    def log_ratio_and_grad(self, x: torch.Tensor, sigma,
                           count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``count``: bool mask of the rows the clip rate counts (all when None)."""
        xd = x.detach().to(torch.float64)
        if self.time_dependent:
            with torch.enable_grad():
                xd.requires_grad_(True)
                log_w = self._log_w(xd, sigma)
                (grad,) = torch.autograd.grad(log_w.sum(), xd)
            log_w = log_w.detach()
        else:
            with torch.no_grad():
                log_w = self._log_w(xd, sigma)
            grad = torch.zeros_like(xd)
        log_w, inside = self._clip(log_w, count)
        grad = grad * inside.reshape(-1, *[1] * (grad.ndim - 1))
        return log_w.to(x.dtype), grad.to(x.dtype)

    @property
    def clip_rate(self) -> float:
        return self.clipped / max(self.seen, 1)

    def log_ratio_at_time(self, x_t: torch.Tensor, t, kernel) -> tuple[torch.Tensor, torch.Tensor]:
        """Unclipped log w_t(x_t) and ∇_{x_t} log w_t of a kernel's x_t = s(t)(y + σ(t)n): w_σ(x_t/s) and
        ∇log w_σ(x̂)/s (METHOD.md §2a), as ``ExactRatio``'s."""
        t = torch.as_tensor(t, dtype=torch.float64)
        s, sigma = kernel.s(t), kernel.sigma(t)
        x_hat = (x_t.detach().to(torch.float64) / s).requires_grad_(True)
        with torch.enable_grad():
            log_w = self._log_w(x_hat, sigma)
            (grad,) = torch.autograd.grad(log_w.sum(), x_hat)
        return log_w.detach(), grad / s


class ClassifierRatio(PosteriorRatio, nn.Module):
    """A :class:`PosteriorRatio` whose posterior is a network: a module, so that it moves with ``.to`` and the
    runner hashes its weights."""

    def __init__(self, classifier: nn.Module, log_prior_ratio: torch.Tensor, time_dependent: bool = True,
                 logit_max: float = math.log(1e5)):
        nn.Module.__init__(self)
        PosteriorRatio.__init__(self, classifier, log_prior_ratio, time_dependent, logit_max)


def model_device(model) -> torch.device:
    return next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")


def label_shift_ratio(components, bias_priors: torch.Tensor, ref_priors: torch.Tensor,
                      obs_weights: torch.Tensor | None = None, correct_prior: bool = True,
                      time_dependent: bool = True, logit_max: float = math.log(1e5)) -> PosteriorRatio:
    """w_σ = Σ_k (q_k/p_k) P_bias(k | x_σ) for mixture ``components`` (their own weights ignored), p =
    ``bias_priors``, q = ``ref_priors``. P_bias is the components weighted by p: a mixture fitted to D_obs has
    D_obs's proportions, which must be corrected to p (METHOD.md §10). ``correct_prior=False`` keeps
    ``obs_weights`` (D_obs's) in the posterior instead: the uncorrected estimator, for the tests."""
    p = torch.as_tensor(bias_priors, dtype=torch.float64)
    q = torch.as_tensor(ref_priors, dtype=torch.float64)
    prior = p if correct_prior else torch.as_tensor(obs_weights, dtype=torch.float64)
    posterior = MixturePosterior(components.with_weights(prior))
    return PosteriorRatio(posterior, q.log() - p.log(), time_dependent, logit_max)


# -- the priors: maximum-likelihood label shift with a Dirichlet prior -------------------------------------------


def em_priors(log_lik: torch.Tensor, start: torch.Tensor, alpha: float = 0.0, iters: int = 2000,
              tol: float = 1e-12, center: torch.Tensor | None = None) -> torch.Tensor:
    """The class priors π maximising Σ_i log Σ_k π_k exp(L_ik) + Kα Σ_k c_k log π_k (Saerens et al. 2002; a
    Dirichlet prior of Kα pseudo-counts spread as ``center`` c, uniform by default):
    π ← (Σ_i softmax_k(L_ik + log π_k) + Kα c_k) / (n + Kα), from ``start``. ``log_lik`` [n, K]: each point's
    class log-likelihoods, up to a per-point constant."""
    n, k = log_lik.shape
    pi = torch.as_tensor(start, dtype=torch.float64).clone()
    pi = pi / pi.sum()
    c = torch.full((k,), 1.0 / k, dtype=torch.float64) if center is None else (center / center.sum()).double()
    for _ in range(iters):
        resp = torch.softmax(log_lik + pi.log(), dim=1)
        new = (resp.sum(0) + k * alpha * c) / (n + k * alpha)
        done = float((new - pi).abs().max()) < tol
        pi = new
        if done:
            break
    return pi


def held_out_log_lik(log_lik: torch.Tensor, pi: torch.Tensor) -> float:
    """Σ_i log Σ_k π_k exp(L_ik) (a weight of 0 counts as 1e-300, so that a score stays finite)."""
    return float(torch.logsumexp(log_lik + pi.clamp_min(1e-300).log(), dim=1).sum())


def choose_alpha(log_lik_ref: torch.Tensor, start: torch.Tensor, generator: torch.Generator,
                 grid=ALPHA_GRID, folds: int = CV_FOLDS,
                 center: torch.Tensor | None = None) -> tuple[float, dict[str, float] | None]:
    """The α of ``grid`` whose priors, fitted on the other folds of D_ref, give its held-out points the highest
    log-likelihood (``folds``-fold cross-validation; ties: the smaller α), and each α's mean held-out
    log-likelihood per point (None where nothing is compared: a grid of one α, which is returned, or fewer than
    2 reference points, where ``ALPHA_DEFAULT`` is)."""
    n = len(log_lik_ref)
    if len(grid) == 1 or n < 2:
        return (grid[0] if len(grid) == 1 else ALPHA_DEFAULT), None
    fold = torch.randperm(n, generator=generator) % min(folds, n)
    scores = {}
    for alpha in grid:
        total = 0.0
        for f in range(int(fold.max()) + 1):
            fit, held = log_lik_ref[fold != f], log_lik_ref[fold == f]
            total += held_out_log_lik(held, em_priors(fit, start, alpha, center=center))
        scores[alpha] = total / n
    best = max(scores.values())
    alpha = min(a for a, v in scores.items() if v >= best - 1e-9 * abs(best))
    return alpha, {f"{a:g}": v for a, v in scores.items()}


# -- the clusters (vectors) ---------------------------------------------------------------------------------------


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def fit_mixture(data: np.ndarray, k: int, seed: int):
    """scikit-learn's full-covariance Gaussian mixture, ``N_INIT`` restarts, on the cell's thread count."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=torch.get_num_threads()):
        return GaussianMixture(k, covariance_type="full", n_init=N_INIT, reg_covar=REG_COVAR, init_params="k-means++",
                               random_state=seed).fit(data)


def component_grid(num_classes: int, n_fit: int) -> list[int]:
    """K over ``K_FACTORS`` × the number of classes (at least 1, at most the points to fit)."""
    return sorted({min(max(1, round(f * num_classes)), n_fit) for f in K_FACTORS})


def choose_components(obs: torch.Tensor, num_classes: int, holdout: float,
                      generator: torch.Generator) -> tuple[int, dict[str, float]]:
    """K of ``component_grid`` by held-out log-likelihood: mixtures fitted on all but ``holdout`` of D_obs score
    the held-out rest; the smallest K within one standard error of the best (the error of the mean paired
    difference over held-out points) is kept. Held-out likelihood, not BIC: BIC's penalty assumes the clusters
    are Gaussian, and on data that are not (images' features) it keeps components whose gain is real only
    in-sample; the held-out score measures the density the posterior is built from, as every other choice here
    is made. The one-error rule: where one Gaussian per class fits, more components gain only noise and leave
    fewer reference points per q̂_k; where a class needs several, the gain is real and K grows (a class split
    over clusters keeps its ratio, METHOD.md §10). Returns K and each K's mean held-out log-likelihood."""
    data = obs.flatten(1).to(torch.float64).cpu().numpy()
    perm = torch.randperm(len(data), generator=generator).numpy()
    n_held = min(max(1, round(holdout * len(data))), len(data) - 1)
    held, fit = data[perm[:n_held]], data[perm[n_held:]]
    seed = _seed(generator)
    per_point = {k: fit_mixture(fit, k, seed).score_samples(held) for k in component_grid(num_classes, len(fit))}
    best = max(per_point, key=lambda k: (per_point[k].mean(), -k))
    k = min(k for k, v in per_point.items()
            if v.mean() >= per_point[best].mean() - (per_point[best] - v).std() / math.sqrt(len(held)))
    return k, {str(k): float(v.mean()) for k, v in per_point.items()}


def sklearn_components(gm) -> FullCovMixture:
    return FullCovMixture(torch.from_numpy(gm.means_), torch.from_numpy(gm.covariances_),
                          torch.from_numpy(gm.weights_))


def class_gaussians(bias: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FullCovMixture:
    """One Gaussian per class fitted on D_bias (mean, covariance + REG_COVAR·I), weighted by D_bias's class
    shares. A class with no more points than dimensions (a singular sample covariance) gets the pooled
    within-class covariance; a class absent from D_bias has no posterior to learn: DataError."""
    x = bias.flatten(1).to(torch.float64).cpu()
    labels = labels.long().flatten().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise DataError(f"class_posterior: classes {missing} have no point in D_bias, so P_bias(k | x) has no "
                        f"data there; raise n_bias or use a learned ratio")
    d = x.shape[1]
    means = torch.stack([x[labels == k].mean(0) for k in range(num_classes)])
    centred = x - means[labels]
    pooled = centred.T @ centred / max(len(x) - num_classes, 1)
    covs = []
    for k in range(num_classes):
        c = centred[labels == k]
        covs.append(c.T @ c / (len(c) - 1) if len(c) > d else pooled)
    covs = torch.stack(covs) + REG_COVAR * torch.eye(d, dtype=torch.float64)
    return FullCovMixture(means, covs, counts.double())


# -- the clusters and the posterior (images) ---------------------------------------------------------------------

IMAGE_K_FACTOR = 2  # k-means clusters per class: over-clustering keeps a class's ratio, merging loses it (§10)


def trunk_inputs(sigma: torch.Tensor, sigma_data: float, kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_in, c_noise) of the denoiser whose features are read: the kernel's, else EDM's."""
    if kernel is not None:
        _, _, c_in, c_noise = kernel.precond(sigma, sigma_data)
        return c_in, c_noise
    return 1 / (sigma**2 + sigma_data**2).sqrt(), sigma.log() / 4


class TrunkClassifier(nn.Module):
    """log P_bias(k | x_σ = x): K logits of a time-conditioned head (an MLP of the ratio models' width, depth 2)
    on the frozen observed-data denoiser's features at (x, σ), read through its own input scaling, as `trunk`'s
    head. σ is floored at ``sigma_floor``, the least noise it was trained at (a clean classifier sees only that)."""

    def __init__(self, trunk: nn.Module, num_classes: int, sigma_data: float, hidden: int, sigma_floor: float,
                 kernel=None):
        super().__init__()
        self.trunk = trunk.requires_grad_(False)
        self.head = MLP(trunk.feature_dim, out_dim=num_classes, hidden=hidden, depth=2, time=True)
        self.sigma_data, self.sigma_floor, self.kernel = sigma_data, sigma_floor, kernel

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: its norm layers stay in inference mode
        return self

    def logits(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x)).clamp_min(self.sigma_floor)
        c_in, c_noise = trunk_inputs(sigma, self.sigma_data, self.kernel)
        feats = self.trunk.features(expand_like(c_in, x) * x, c_noise)
        # per point, to unit scale: a denoiser's pooled features are small (≈ 0.01) and their scale moves with σ
        return self.head(F.layer_norm(feats, feats.shape[1:]), c_noise)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return torch.log_softmax(self.logits(x, sigma).to(torch.float64), dim=1)


@torch.no_grad()
def trunk_features(trunk: nn.Module, data: torch.Tensor, sigma: float, sigma_data: float, kernel,
                   device) -> torch.Tensor:
    """The frozen denoiser's features of clean ``data`` at noise level ``sigma``, in batches."""
    out = []
    for chunk in data.split(512):
        x = chunk.to(device).float()
        s = torch.full((len(x),), sigma, device=device)
        c_in, c_noise = trunk_inputs(s, sigma_data, kernel)
        out.append(trunk.features(expand_like(c_in, x) * x, c_noise).double().cpu())
    return torch.cat(out)


def kmeans_clusters(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means (scikit-learn, ``N_INIT`` restarts) on the standardised features; the cluster id of every row."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    z = (features - features.mean(0)) / features.std(0).clamp_min(1e-8)
    with threadpool_limits(limits=torch.get_num_threads()):
        km = KMeans(n_clusters=min(k, len(z)), n_init=N_INIT, random_state=seed).fit(z.numpy())
    return torch.from_numpy(km.labels_).long()


def train_classifier(clf: TrunkClassifier, data: torch.Tensor, ids: torch.Tensor, cfg, generator: torch.Generator,
                     time_dependent: bool, device="cpu", progress=None) -> dict:
    """Cross-entropy of the classes ``ids`` of D_bias's points, each perturbed at its own σ from the ratio models'
    widened noise distribution (clean: at the floor): uniform draws of D_bias, so the posterior learnt is
    P_bias(k | x_σ), under D_bias's own class shares."""
    opt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    data, ids = data.to(device), ids.to(device)
    generator = device_generator(generator, device)
    n = 2 * cfg.batch_size
    clf.train()

    def step_loss() -> torch.Tensor:
        i = torch.randint(len(data), (n,), generator=generator, device=generator.device).to(device)
        y = data[i]
        if time_dependent:
            sigma = draw_ratio_sigma(n, cfg, generator, device)
            noise = torch.randn(y.shape, generator=generator, device=generator.device).to(device)
            x = y + expand_like(sigma, y) * noise
        else:
            sigma, x = torch.full((n,), clf.sigma_floor, device=device), y
        return F.cross_entropy(clf.logits(x, sigma), ids[i])

    final = optimise(opt, step_loss, cfg.steps, device, progress,
                     "posterior-classifier training produced a non-finite loss")
    clf.eval()
    return {"final_cross_entropy": final}


@torch.no_grad()
def classifier_log_lik(clf: TrunkClassifier, data: torch.Tensor, log_p: torch.Tensor, device) -> torch.Tensor:
    """L_ik = log P_bias(k | x_i) − log p_k at the least noise: each point's class log-likelihoods up to a per-point
    constant (Bayes), what the label-shift EM takes."""
    out = [clf(chunk.to(device), clf.sigma_floor).cpu() for chunk in data.split(512)]
    return torch.cat(out) - log_p


def fit_image_posterior(est: RatioEstimator, d_obs, bias: torch.Tensor, bias_ids: torch.Tensor, k: int,
                        generator: torch.Generator, device, progress) -> tuple[TrunkClassifier, dict]:
    """The noise-conditional classifier of ``bias_ids`` (k classes) on the trunk of ``d_obs``, the observed-data
    denoiser."""
    clf = TrunkClassifier(d_obs.model, k, est.dataset.sigma_data, est.cfg.hidden, est.cfg.sigma_min,
                          est.kernel).to(device)
    return clf, train_classifier(clf, bias, bias_ids, est.train_config(), generator, est.time_dependent, device,
                                 progress)


# -- diagnostics against the true labels --------------------------------------------------------------------------


def cluster_purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of points whose cluster's majority class is their own class."""
    clusters, labels = clusters.long().flatten().cpu(), labels.long().flatten().cpu()
    k, c = int(clusters.max()) + 1, int(labels.max()) + 1
    table = torch.bincount(clusters * c + labels, minlength=k * c).reshape(k, c)
    return float(table.max(1).values.sum()) / len(labels)


def prior_ratio_error(clean_log_w: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor,
                      bias_labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Over the true classes c present in both D_ref and D_bias: ŵ_c = mean of the clean ratio ŵ(x) over the
    points of class c (``clean_log_w`` and ``labels``: D_obs's), the truth q_c/p_c from D_ref's and D_bias's
    label shares; the rms of log ŵ_c − log(q_c/p_c), and both per class (None for a class left out)."""
    labels = labels.long().flatten().cpu()
    q = torch.bincount(ref_labels.long().flatten().cpu(), minlength=num_classes).double() / len(ref_labels)
    p = torch.bincount(bias_labels.long().flatten().cpu(), minlength=num_classes).double() / len(bias_labels)
    w = clean_log_w.double().cpu().exp()
    estimate, truth, gaps = [], [], []
    for c in range(num_classes):
        if q[c] == 0 or p[c] == 0 or not (labels == c).any():
            estimate.append(None)
            truth.append(None)
            continue
        w_c = float(w[labels == c].mean())
        estimate.append(w_c)
        truth.append(float(q[c] / p[c]))
        gaps.append(math.log(w_c) - math.log(truth[-1]))
    rms = math.sqrt(sum(g * g for g in gaps) / len(gaps)) if gaps else None
    return {"prior_ratio_error": rms, "prior_ratio_by_class": {"estimate": estimate, "truth": truth},
            "classes_scored": len(gaps)}


def label_diagnostics(est: RatioEstimator, model: PosteriorRatio, obs: torch.Tensor,
                      clusters: torch.Tensor) -> dict[str, Any]:
    """Purity and prior-ratio error (module docstring) where the runner passed the split's labels; {} without."""
    split = est.split
    if split is None or getattr(split, "bias_labels", None) is None or getattr(split, "ref_labels", None) is None:
        return {}
    labels = torch.cat([split.ref_labels, split.bias_labels])  # D_obs's order: D_ref, then D_bias
    dev = model_device(model)
    with torch.no_grad():  # the clean ratio ŵ(x) = w_0(x), unclipped
        log_w = torch.cat([model._log_w(chunk.to(dev, torch.float64), 0.0).cpu() for chunk in obs.split(1024)])
    out = {"purity": cluster_purity(clusters, labels)}
    out.update(prior_ratio_error(log_w, labels, split.ref_labels, split.bias_labels, est.dataset.num_classes))
    return out


# -- the registered estimators -----------------------------------------------------------------------------------


class LabelShift(RatioEstimator):
    """w_σ = Σ_k (q̂_k/p̂_k) P̂_bias(k | x_σ) from clusters of D_obs, priors by maximum-likelihood label shift with
    a Dirichlet prior chosen on D_ref (module docstring). The kernel changes nothing: the harness works in
    x̂ = y + σn, where w_σ is the same for every kernel (METHOD.md §2a)."""

    name = "label_shift"
    description = ("Σ_k (q̂_k/p̂_k) P_bias(k|x_σ): clusters of D_obs (Gaussian mixture; images: k-means + "
                   "noise-conditional classifier), priors by EM label shift")
    learned = True
    ceiling = False
    correct_prior: ClassVar[bool] = True  # False: P_bias with D_obs's mixture weights (the tests' wrong variant)
    alpha_grid: ClassVar[tuple[float, ...]] = ALPHA_GRID

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        if self.dataset.kind != "vector":
            return self.fit_images(bias, ref, generator, device, progress)
        obs = torch.cat([ref, bias]).flatten(1).to(torch.float64).cpu()
        k, k_scores = choose_components(obs, self.dataset.num_classes, self.cfg.select_holdout, generator)
        gm = fit_mixture(obs.numpy(), k, _seed(generator))
        comps = sklearn_components(gm)
        obs_weights = comps.weights
        unit = comps.with_weights(torch.ones(k))  # log N_k(x): the class likelihoods of the EM
        lik_bias = unit.log_joint(bias.flatten(1).cpu(), 0.0)
        lik_ref = unit.log_joint(ref.flatten(1).cpu(), 0.0)
        # the reference priors shrink toward D_bias's (w = 1: no correction), never toward a uniform target,
        # which would be a prior towards the truth wherever the unbiased classes happen to be balanced
        p_hat = em_priors(lik_bias, obs_weights, 0.0)
        alpha, alpha_scores = choose_alpha(lik_ref, obs_weights, generator, self.alpha_grid, center=p_hat)
        q_hat = em_priors(lik_ref, obs_weights, alpha, center=p_hat)
        model = label_shift_ratio(comps, p_hat, q_hat, obs_weights, self.correct_prior, self.time_dependent,
                                  self.cfg.logit_max)
        info: dict[str, Any] = {
            "clusters": "full-covariance Gaussian mixture of D_obs (scikit-learn)", "K": k,
            "K_held_out_log_lik": k_scores, "alpha": alpha, "alpha_cv_log_lik": alpha_scores,
            "p_hat": p_hat.tolist(), "q_hat": q_hat.tolist(), "obs_weights": obs_weights.tolist(),
            "prior_corrected": self.correct_prior}
        clusters = torch.from_numpy(gm.predict(obs.numpy()))
        info.update(label_diagnostics(self, model, obs, clusters))
        return model, info

    def fit_images(self, bias, ref, generator, device="cpu", progress=None):
        """k-means on the observed-data denoiser's features of D_obs at the least noise, K = ``IMAGE_K_FACTOR`` ×
        the classes; the classifier of the cluster ids on D_bias is P_bias; p = D_bias's cluster shares (the prior
        that classifier learnt); q̂ by the label-shift EM on its posteriors over D_ref."""
        d_obs, obs_info = observed_denoiser(self, bias, ref, generator, device, progress)
        obs = torch.cat([ref, bias])
        feats = trunk_features(d_obs.model, obs, self.cfg.sigma_min, self.dataset.sigma_data, self.kernel, device)
        k_asked = IMAGE_K_FACTOR * self.dataset.num_classes
        clusters = kmeans_clusters(feats, k_asked, _seed(generator))
        # a cluster without a D_bias point has no posterior to learn (and D_bias no mass there): left out
        kept = torch.unique(clusters[len(ref):])
        ids = torch.searchsorted(kept, clusters[len(ref):])
        k = len(kept)
        p = torch.bincount(ids, minlength=k).double() / len(ids)
        start = torch.bincount(clusters, minlength=int(clusters.max()) + 1)[kept].double()
        clf, clf_info = fit_image_posterior(self, d_obs, bias, ids, k, generator, device, progress)
        lik_ref = classifier_log_lik(clf, ref, p.log(), device)
        alpha, alpha_scores = choose_alpha(lik_ref, start, generator, self.alpha_grid, center=p)
        q_hat = em_priors(lik_ref, start, alpha, center=p)
        model = ClassifierRatio(clf, q_hat.log() - p.log(), self.time_dependent, self.cfg.logit_max).to(device).eval()
        info: dict[str, Any] = {
            "clusters": "k-means of the observed-data denoiser's features at the least noise", "K": k,
            "K_asked": k_asked, "alpha": alpha, "alpha_cv_log_lik": alpha_scores, "p_hat": p.tolist(),
            "q_hat": q_hat.tolist(), "posterior": clf_info, **obs_info}
        info.update(label_diagnostics(self, model, obs, clusters))
        return model, info


class ClassPosterior(RatioEstimator):
    """``label_shift`` with the true classes: P_bias(k | x_σ) of one Gaussian per class fitted on D_bias's labelled
    points (closed form at every σ; images: the noise-conditional classifier of the labels on the observed-data
    denoiser's trunk), p = D_bias's class shares, q̂ = D_ref's (as `exact_empirical`). A ceiling: it reads the
    labels that define the bias."""

    name = "class_posterior"
    description = ("label_shift with the true labels: P_bias(k|x_σ) of a Gaussian per class (images: a "
                   "noise-conditional classifier) on D_bias, D_ref's class shares (a ceiling)")
    learned = True
    ceiling = True  # the true class labels of D_bias and D_ref

    def class_components(self, bias: torch.Tensor, bias_labels: torch.Tensor):
        """The per-class components P_bias is built from (their weights are replaced by p)."""
        return class_gaussians(bias, bias_labels, self.dataset.num_classes)

    def class_priors(self, bias_labels: torch.Tensor) -> torch.Tensor:
        """p: D_bias's class shares (the prior P_bias(k | x) is built with)."""
        return torch.bincount(bias_labels, minlength=self.dataset.num_classes).double() / len(bias_labels)

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        split = self.split
        if split is None or getattr(split, "bias_labels", None) is None or getattr(split, "ref_labels", None) is None:
            raise DataError("class_posterior needs the class labels of D_bias and D_ref: the runner passes the "
                            "split before fit")
        k = self.dataset.num_classes
        bias_labels, ref_labels = split.bias_labels.long().flatten(), split.ref_labels.long().flatten()
        p = self.class_priors(bias_labels)
        q = torch.bincount(ref_labels, minlength=k).double() / len(ref_labels)
        info: dict[str, Any] = {"K": k, "p_hat": p.tolist(), "q_hat": q.tolist()}
        if self.dataset.kind == "vector":
            model = label_shift_ratio(self.class_components(bias, bias_labels), p, q,
                                      time_dependent=self.time_dependent, logit_max=self.cfg.logit_max)
            info["clusters"] = "true classes, one Gaussian each on D_bias"
        else:
            if (p == 0).any():
                raise DataError(f"class_posterior: classes {torch.nonzero(p == 0).flatten().tolist()} have no "
                                f"image in D_bias, so P_bias(k | x) has no data there; use a learned ratio")
            d_obs, obs_info = observed_denoiser(self, bias, ref, generator, device, progress)
            clf, info["posterior"] = fit_image_posterior(self, d_obs, bias, bias_labels, k, generator, device, progress)
            info.update(obs_info)
            model = ClassifierRatio(clf, q.log() - p.log(), self.time_dependent, self.cfg.logit_max).to(device).eval()
            info["clusters"] = "true classes, a noise-conditional classifier on the observed-data denoiser's trunk"
        obs = torch.cat([ref, bias])
        dev = model_device(model)
        with torch.no_grad():  # the classes it assigns at the least noise, for purity
            clusters = torch.cat([model.log_posterior(c.to(dev), 0.0).argmax(1).cpu() for c in obs.split(1024)])
        info.update(label_diagnostics(self, model, obs, clusters))
        return model, info


# -- a hybrid: label shift as the base of a discriminator's logit -------------------------------------------------


class BasedRatio(LearnedRatio):
    """A discriminator whose logit is a frozen base's log w_σ plus its own output. Trained by balanced BCE (whose
    optimum is log w_σ) it learns only what the base misses, log w_σ − log ŵ_base: under label shift nothing
    (up to noise), under a tilt inside the clusters the within-cluster part; its early stopping (ratio.select_every)
    keeps that residual small where D_ref cannot resolve it."""

    def __init__(self, base, net: nn.Module, sigma_data: float, time_dependent: bool = True,
                 logit_max: float = math.log(1e5), precond: bool = False, kernel=None):
        super().__init__(net, sigma_data, time_dependent, logit_max, precond, kernel)
        if isinstance(base, nn.Module):
            base.requires_grad_(False)  # frozen: only the residual trains
        self.base = base

    def _logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        base_sigma = sigma if self.time_dependent else 0.0
        return self.base.logit(x, base_sigma).to(x.dtype) + super()._logit(x, sigma)


class LabelShiftDiscriminator(Discriminator):
    """``label_shift``'s ratio as the base of a discriminator's logit (:class:`BasedRatio`): the group's own
    ``label_shift`` fit (so ``tiw_dsm@label_shift_disc`` differs from ``tiw_dsm@label_shift`` by the residual
    alone), the residual a discriminator of the suite's size trained by balanced BCE."""

    name = "label_shift_disc"
    description = ("discriminator whose logit starts from label_shift's log w: the residual learns what label "
                   "shift misses (a tilt inside the clusters)")

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        if self.base_fit is not None:
            base, base_info, _ = self.base_fit("label_shift")
        else:
            est = LabelShift(self.dataset, self.cfg, self.time_dependent, kernel=self.kernel)
            est.split, est.shared, est.shared_seed = self.split, self.shared, self.shared_seed
            base, base_info = est.fit(bias, ref, generator, device, progress)
        plain = self.build()
        model = BasedRatio(base, plain.net, plain.sigma_data, self.time_dependent, plain.logit_max, plain.precond,
                           plain.kernel).to(device)
        info = train_ratio(model, bias, ref, self.train_config(), generator, device, progress, keep=self.keep)
        keep = ("K", "p_hat", "q_hat", "alpha", "purity", "prior_ratio_error")
        base_kept = {k: base_info[k] for k in keep if k in base_info}
        return model, {**info, "base": {"estimator": "label_shift", **base_kept}}
