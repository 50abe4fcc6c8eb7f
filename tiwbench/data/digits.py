"""``digits_lt``: scikit-learn's bundled 8×8 digits, long-tailed (embedded; needs no download)."""

from __future__ import annotations

from typing import Any

import torch

from tiwbench.data.base import DataError, contaminated_count
from tiwbench.data.images import LabelledImageDataset, apportion, balanced_counts
from tiwbench.data.mixtures import long_tail_weights


class DigitsLT(LabelledImageDataset):
    """D_bias: ``n_bias`` digits with class k ∝ ρ^{k/9} (digit 0 the head); D_ref class-balanced.

    With ρ = 0.1 the head weight is 0.245, so 600 biased images take 147 zeros; the classes have
    174–183 images, which leaves room for a disjoint balanced D_ref at every ref_frac of the grid
    (0.05–0.5; at 0.5 the 300 reference images take 30 a class). Target and oracle: all 1,797
    images (the full unbiased set; it contains D_bias and D_ref, as CIFAR-10's train set does).
    """

    name = "digits_lt"
    shape = (1, 8, 8)
    class_names = tuple(str(k) for k in range(10))
    defaults: dict[str, Any] = {
        "rho": 0.1,  # tail/head class ratio of D_bias
        "n_bias": 600,  # |D_bias|; 600 is about the most that still fits ref_frac 0.5 disjointly
        "contamination": 0.0,  # fraction of D_ref drawn with D_bias's class proportions (a corrupted reference)
    }
    evaluator_config = {**LabelledImageDataset.evaluator_config, "width": 32, "epochs": 20}

    def __init__(self, **params: Any):
        super().__init__(**params)
        if not 0 < self.params["rho"] <= 1 or int(self.params["n_bias"]) < 1:
            raise DataError(f"digits_lt needs 0 < rho <= 1 and n_bias >= 1; got {self.params}")
        contaminated_count(1, float(self.params["contamination"]))  # in [0, 1], or a one-line error

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        d = load_digits()
        images = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 8 - 1  # 0..16 -> [-1, 1]
        return images, torch.as_tensor(d.target, dtype=torch.int64)

    def load_key(self) -> tuple:
        return ("sklearn-digits",)

    def ref_counts(self, n_ref: int, spare: list[int]) -> list[int]:
        """Class-balanced, except a ``contamination`` share drawn as p_bias draws: its classes apportioned
        by the long-tailed weights (images still disjoint from D_bias)."""
        n_cont = contaminated_count(n_ref, float(self.params["contamination"]))
        clean = balanced_counts(n_ref - n_cont, [s - c for s, c in zip(spare, apportion(n_cont, self.bias_weights()))])
        return [a + b for a, b in zip(clean, apportion(n_cont, self.bias_weights()))]

    def bias_weights(self) -> torch.Tensor:
        return long_tail_weights(self.num_classes, float(self.params["rho"]))
