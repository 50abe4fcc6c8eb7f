"""Labelled image datasets: the shared biased/reference split logic (METHOD.md §8).

A subclass loads its images (float32 in [-1, 1], [N, C, H, W]) and labels (int64) and says how
D_bias is biased (class proportions). From those this module draws, per (ref_frac, seed):

- D_bias: ``n_bias`` images, class k getting ``n_bias · β_k`` of them (largest-remainder rounding);
- D_ref: ``round(ref_frac · n_bias)`` images, class-balanced (counts differ by at most one);
- both from per-class permutations of the source, so they never share an image;
- the oracle/target set: the subclass's unbiased set (by default every image).

A ref_frac that does not fit disjointly is a DataError naming the largest one that does.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch

from tiwbench.data.base import BiasedDataset, DataError, Evaluator, Split


def apportion(total: int, weights: torch.Tensor) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest remainder; ties to
    the lower index, so the result is deterministic)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    exact = w / w.sum() * total
    counts = exact.floor().long()
    rest = total - int(counts.sum())
    order = sorted(range(len(w)), key=lambda k: (-(float(exact[k]) - int(counts[k])), k))
    for k in order[:rest]:
        counts[k] += 1
    return counts.tolist()


def balanced_counts(total: int, spare: list[int]) -> list[int]:
    """``total`` split equally over the classes; the remainder goes to the classes with the most
    spare images (ties to the lower index), which makes feasibility a function of ``total`` only."""
    k = len(spare)
    counts = [total // k] * k
    for c in sorted(range(k), key=lambda c: (-spare[c], c))[: total % k]:
        counts[c] += 1
    return counts


def max_balanced(spare: list[int]) -> int:
    """The largest class-balanced total that fits in ``spare`` images per class."""
    best = 0
    for total in range(sum(spare) + 1):
        if all(c <= s for c, s in zip(balanced_counts(total, spare), spare)):
            best = total
        else:
            break  # counts only grow with total
    return best


def require_path(path: str | Path | None, what: str, how: str) -> Path:
    """The path, or a DataError saying what was expected there and how to get it."""
    if not path:
        raise DataError(f"no path given for {what}; {how}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"expected {what} at {p}, but it does not exist; {how}")
    return p


_LOADED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # a sweep builds one dataset per group


class LabelledImageDataset(BiasedDataset):
    """Base class of the image datasets: subclasses implement :meth:`load` and :meth:`bias_weights`."""

    kind = "image"
    sigma_data = 0.5  # EDM's value for images in [-1, 1]
    class_names: ClassVar[tuple[str, ...]] = ()
    # The domain evaluator's classifier and its training (tiwbench.data.evaluator); part of its cache key.
    evaluator_config: ClassVar[dict[str, Any]] = {
        "width": 32, "epochs": 30, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4,
        "holdout": 0.2, "flip": False,
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.num_classes = len(self.class_names)

    # -- what a subclass provides ---------------------------------------------------------
    @abstractmethod
    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All source images (float32 [N, C, H, W] in [-1, 1]) and labels (int64 [N])."""

    @abstractmethod
    def bias_weights(self) -> torch.Tensor:
        """Class proportions of D_bias."""

    def load_key(self) -> tuple:
        """What :meth:`load`'s result depends on (for the in-process cache); () disables caching."""
        return ()

    def target_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the unbiased target set (the oracle's training set and the metrics' target)."""
        return torch.arange(len(labels))

    @property
    def target_proportions(self) -> torch.Tensor:
        """p*: the target's class proportions (uniform unless a subclass says otherwise)."""
        return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)

    # -- shared logic ---------------------------------------------------------------------
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = (type(self).__name__, *self.load_key())
        if len(key) > 1 and key in _LOADED:
            return _LOADED[key]
        images, labels = self.load()
        if images.dtype != torch.float32 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.shape):
            raise DataError(f"{self.name}: loaded images have dtype {images.dtype} and shape "
                            f"{tuple(images.shape)}; expected float32 [N, {', '.join(map(str, self.shape))}]")
        labels = labels.to(torch.int64)
        if len(key) > 1:
            _LOADED.clear()  # keep one dataset in memory (CIFAR-10 is 600 MB as float32)
            _LOADED[key] = (images, labels)
        return images, labels

    def bias_counts(self) -> list[int]:
        return apportion(int(self.params["n_bias"]), self.bias_weights())

    def ref_counts(self, n_ref: int, spare: list[int]) -> list[int]:
        """Class counts of D_ref (class-balanced); a subclass may draw part of it otherwise."""
        return balanced_counts(n_ref, spare)

    def split_indices(self, ref_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source indices of D_bias and D_ref: disjoint, deterministic from ``seed``."""
        if not 0 < ref_frac <= 1:
            raise DataError(f"ref_frac must be in (0, 1], got {ref_frac}")
        _, labels = self.data()
        avail = torch.bincount(labels, minlength=self.num_classes).tolist()
        n_bias = int(self.params["n_bias"])
        b = self.bias_counts()
        short = [k for k in range(self.num_classes) if b[k] > avail[k]]
        if short:
            k = short[0]
            raise DataError(f"{self.name}: D_bias of {n_bias} images needs {b[k]} of class "
                            f"{self.class_names[k]!r} but the data has {avail[k]}; lower n_bias")
        spare = [a - c for a, c in zip(avail, b)]
        n_ref = max(1, round(ref_frac * n_bias))
        r = self.ref_counts(n_ref, spare)
        if any(c > s for c, s in zip(r, spare)):
            largest = max_balanced(spare)
            raise DataError(
                f"{self.name}: ref_frac {ref_frac:g} asks for a class-balanced D_ref of {n_ref} images "
                f"disjoint from D_bias, but only {largest} fit (largest feasible ref_frac "
                f"{int(largest / n_bias * 1000) / 1000:g} with n_bias={n_bias}); lower ref_frac or n_bias")
        g = torch.Generator().manual_seed(int(seed))
        bias_idx, ref_idx = [], []
        for k in range(self.num_classes):
            members = torch.nonzero(labels == k).flatten()
            members = members[torch.randperm(len(members), generator=g)]
            bias_idx.append(members[: b[k]])
            ref_idx.append(members[b[k] : b[k] + r[k]])
        return torch.cat(bias_idx), torch.cat(ref_idx)

    def split(self, ref_frac: float, seed: int) -> Split:
        images, labels = self.data()
        bias_idx, ref_idx = self.split_indices(ref_frac, seed)
        target = self.target_indices(labels)
        return Split(images[bias_idx], labels[bias_idx], images[ref_idx], labels[ref_idx], images[target])

    def target_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.data()
        idx = self.target_indices(labels)
        return images[idx], labels[idx]

    def evaluator(self, cache_dir: str | None = None, device: str = "cpu") -> Evaluator:
        from tiwbench.data.evaluator import ImageEvaluator

        return ImageEvaluator.for_dataset(self, cache_dir=cache_dir, device=device)
