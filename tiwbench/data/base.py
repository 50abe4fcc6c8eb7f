"""What a dataset gives the harness: a split for (ref_frac, seed) and an evaluator for metrics."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from tiwbench.config import like_default


class DataError(ValueError):
    """Bad data input (missing path, malformed file, impossible split); the message names the fix."""


def content_hash(*arrays: torch.Tensor | np.ndarray, n: int = 16) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:n]


def stream_seed(seed: int, name: str) -> int:
    """A generator seed of its own for each named draw of a split, so that one draw (e.g. the oracle set)
    never changes when another (e.g. D_ref's size) does."""
    return int.from_bytes(hashlib.sha256(repr((int(seed), name)).encode()).digest()[:8], "little") & (2**63 - 1)


def contaminated_count(n_ref: int, contamination: float) -> int:
    """How many of the ``n_ref`` reference samples are drawn from p_bias instead of p_data."""
    if not 0 <= contamination <= 1:
        raise DataError(f"contamination must be in [0, 1] (a fraction of D_ref drawn from p_bias), got {contamination}")
    return round(contamination * n_ref)


@dataclass
class Split:
    """The data of one (dataset, ref_frac, seed) group of cells."""

    bias: torch.Tensor  # D_bias ~ p_bias
    bias_labels: torch.Tensor
    ref: torch.Tensor  # D_ref ~ p_data, disjoint from D_bias
    ref_labels: torch.Tensor
    oracle: torch.Tensor  # a large unbiased set: what the `oracle` ceiling trains on
    hashes: dict[str, str] = field(default_factory=dict)
    # held out of every network's and ratio model's training (train.ref_holdout): what checkpoint selection
    # scores against when it may not look at the truth; None without a holdout
    held_ref: torch.Tensor | None = None
    held_oracle: torch.Tensor | None = None

    def __post_init__(self):
        if not self.hashes:
            self.hashes = {
                "bias": content_hash(self.bias, self.bias_labels),
                "ref": content_hash(self.ref, self.ref_labels),
                "oracle": content_hash(self.oracle),
            }
            if self.held_ref is not None:
                self.hashes["held_ref"] = content_hash(self.held_ref)
                self.hashes["held_oracle"] = content_hash(self.held_oracle)

    def hold_out(self, share: float, seed: int) -> Split:
        """This split with ``share`` of D_ref (and of the oracle's set) moved, at random from ``seed``'s own
        stream, out of ``ref`` (``oracle``) into ``held_ref`` (``held_oracle``): at least one point held out
        and one kept. Everything that reads ``ref`` (training, ratio fits, D_ref's proportions, the reference
        levels) then sees the training part only."""
        if not 0 < share < 1:
            raise DataError(f"a held-out share of D_ref must be in (0, 1), got {share}")
        if len(self.ref) < 2:
            raise DataError(f"D_ref has {len(self.ref)} point(s): nothing can be held out for checkpoint "
                            f"selection; raise ref_frac or use train.select_source: none")

        def parts(n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(seed, name)))
            k = min(n - 1, max(1, round(share * n)))
            return order[k:].sort().values, order[:k].sort().values

        keep, held = parts(len(self.ref), "ref-holdout")
        keep_o, held_o = parts(len(self.oracle), "oracle-holdout")
        return Split(self.bias, self.bias_labels, self.ref[keep], self.ref_labels[keep], self.oracle[keep_o],
                     held_ref=self.ref[held], held_oracle=self.oracle[held_o])

    def observed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """D_obs = D_bias ∪ D_ref with the is_ref flag per sample."""
        x = torch.cat([self.bias, self.ref])
        is_ref = torch.cat([torch.zeros(len(self.bias), dtype=torch.bool), torch.ones(len(self.ref), dtype=torch.bool)])
        return x, is_ref


class Evaluator(ABC):
    """What metrics see of a dataset: features for FD, an attribute classifier for bias."""

    num_classes: int
    target_proportions: torch.Tensor  # p*, the unbiased attribute proportions
    info: dict[str, Any]  # recorded with every metric that uses it (accuracy, checkpoint hash)

    @abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def target_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance (float64) of the target's features."""


class BiasedDataset(ABC):
    """Base class of registered datasets. Subclasses declare their parameters in ``defaults``."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "vector" or "image": which networks the runner builds
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise DataError(
                f"unknown parameter(s) {unknown} for dataset {self.name!r}; allowed: {sorted(self.defaults)}"
            )
        for key, value in list(params.items()):
            try:
                params[key] = like_default(value, self.defaults[key])
            except TypeError as e:
                raise DataError(f"parameter {key!r} of dataset {self.name!r} {e}") from None
        self.params = {**self.defaults, **params}

    shape: tuple[int, ...]
    sigma_data: float
    num_classes: int

    @abstractmethod
    def split(self, ref_frac: float, seed: int) -> Split: ...

    @abstractmethod
    def evaluator(self, cache_dir: str | None = None, device: str = "cpu") -> Evaluator: ...

    def exact_ratio(self, time_dependent: bool = True):
        """The closed-form density ratio, where the dataset has one (mixtures)."""
        raise DataError(f"dataset {self.name!r} has no exact density ratio; use `ratio: learned` in the suite")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}
