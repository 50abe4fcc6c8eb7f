"""Metric base class and the two metrics every dataset has: ``fd`` and ``bias`` (METHOD.md §7)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.linalg
import torch

# what the image metrics import (tiwbench.metrics.fidelity) and the extra that installs it
FIDELITY_MODULES = {"torchvision": "fid", "torch_fidelity": "fid", "cleanfid": "fid"}


class MetricError(ValueError):
    """A metric cannot be computed on this input; the message says why and what to do."""


@dataclass
class EvalContext:
    """What a metric may look at: the generated samples and the dataset's evaluator."""

    samples: torch.Tensor
    evaluator: Any  # tiwbench.data.base.Evaluator
    dataset: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None  # the run's cache (reference statistics of image metrics)
    memo: dict[Any, Any] = field(default_factory=dict)  # results shared by the metrics of one cell
    split: Any = None  # tiwbench.data.base.Split of the cell: D_ref's labels for the reference levels
    train_data: torch.Tensor | None = None  # what the method trained on (memorization)
    _features: torch.Tensor | None = None

    def features(self) -> torch.Tensor:
        if self._features is None:  # shared by every metric of a cell
            self._features = self.evaluator.features(self.samples).to(torch.float64)
        return self._features


class Metric(ABC):
    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    description: ClassVar[str] = ""
    ranked: ClassVar[bool] = True  # False: a diagnostic the leaderboard shows but marks no winner of
    # True: a distance to the truth, where the oracle (trained on unbiased data) leads a converged table
    oracle_leads: ClassVar[bool] = True

    @classmethod
    def needs(cls, dataset) -> dict[str, str]:
        """Modules this metric imports on ``dataset`` -> the extra that installs them (checked before a sweep)."""
        return {}

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        """Whether the metric can be computed on this cell (the reference levels need labels or exact moments)."""
        return True

    @abstractmethod
    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        """Returns ``{"value": float, ...extras}``."""


def mean_cov(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1 Σ2)^{1/2})."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise as the FID tools do
        eps = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def check_enough_samples(n: int, dim: int, what: str = "features") -> None:
    if n <= dim:
        raise MetricError(
            f"{n} samples for {dim}-dimensional {what}: the covariance is singular; "
            f"generate more than {dim} samples (sample.n in the profile)"
        )


class FD(Metric):
    """Fréchet distance in the evaluator's feature space (raw coordinates on mixtures); on images the
    registered ``fd`` (tiwbench.metrics.fd) goes through eval.fid_backend instead."""

    name = "fd"
    higher_is_better = False
    description = "Fréchet distance to the unbiased target in the evaluator's feature space"

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        f = ctx.features()
        if not torch.isfinite(f).all():
            raise MetricError("generated samples have non-finite features; the model diverged")
        check_enough_samples(len(f), f.shape[1])
        mu, cov = mean_cov(f.numpy())
        mu_t, cov_t = (np.asarray(t, dtype=np.float64) for t in ctx.evaluator.target_stats())
        return {"value": frechet_distance(mu, cov, mu_t, cov_t)}


def attribute_bias(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, list[float]]:
    """‖p̂ − p*‖₂ with p̂ = bincount(pred, minlength=K)/N: empty classes count (collapse is worst)."""
    k = len(target)
    props = torch.bincount(pred.long().flatten(), minlength=k).double() / max(len(pred), 1)
    return float(torch.linalg.vector_norm(props - target.double())), props.tolist()


class Bias(Metric):
    """L2 distance between generated attribute proportions and the target's."""

    name = "bias"
    higher_is_better = False
    description = "‖p̂ − p*‖₂ of attribute proportions under the evaluator's classifier"

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        pred = ctx.evaluator.predict(ctx.samples)
        value, props = attribute_bias(pred, ctx.evaluator.target_proportions)
        return {"value": value, "proportions": props, "classifier": dict(ctx.evaluator.info)}
