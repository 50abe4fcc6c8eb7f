"""What no method that learns from D_ref can beat (METHOD.md §5a), recorded beside every cell.

- ``bias_floor``: the bias of D_ref's own empirical label proportions, ‖p_ref − p*‖₂: what a method that
  reproduced D_ref exactly would score.
- ``bias_ref``: the generated proportions against D_ref's empirical ones, ‖p̂ − p_ref‖₂: how far a method
  is from the information it had, beside ``bias`` (against the truth).
- ``fd_floor``: on exact mixtures, the fd of as many fresh samples of the truth as the method generated.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from tiwbench.metrics.base import EvalContext, Metric, attribute_bias, check_enough_samples, frechet_distance, mean_cov


def ref_proportions(ctx: EvalContext) -> torch.Tensor:
    k = int(ctx.evaluator.num_classes)
    labels = ctx.split.ref_labels.long().flatten()
    return torch.bincount(labels, minlength=k).double() / max(len(labels), 1)


def _labelled(ctx: EvalContext) -> bool:
    split = ctx.split
    if split is None or getattr(split, "ref_labels", None) is None or len(split.ref_labels) == 0:
        return False
    labels = split.ref_labels.long().flatten()
    k = getattr(ctx.evaluator, "num_classes", None)
    return k is not None and int(labels.min()) >= 0 and int(labels.max()) < int(k)


class BiasFloor(Metric):
    name = "bias_floor"
    higher_is_better = False
    description = "bias of D_ref's own empirical label proportions (the floor of methods learning from D_ref)"

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return _labelled(ctx)

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        p_ref = ref_proportions(ctx)
        value = float(torch.linalg.vector_norm(p_ref - ctx.evaluator.target_proportions.double()))
        return {"value": value, "proportions": p_ref.tolist(), "ref_size": len(ctx.split.ref_labels)}


class BiasRef(Metric):
    name = "bias_ref"
    higher_is_better = False
    description = "‖p̂ − p_ref‖₂: generated proportions against D_ref's empirical ones"
    ranked = False  # how close a method stays to D_ref's sampling noise, not to the truth: nothing to win

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return _labelled(ctx)

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        pred = ctx.memo.get("predictions")
        if pred is None:
            pred = ctx.memo["predictions"] = ctx.evaluator.predict(ctx.samples)
        value, _ = attribute_bias(pred, ref_proportions(ctx))
        return {"value": value}


class FDFloor(Metric):
    name = "fd_floor"
    higher_is_better = False
    description = "fd of as many fresh samples of the truth as were generated (exact mixtures)"

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return hasattr(ctx.evaluator, "truth_sample")

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        n = len(ctx.samples)
        # seeded by the split, so every method of a group shows the same floor
        tag = repr(sorted((ctx.split.hashes if ctx.split is not None else {}).items())).encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(tag).digest()[:8], "little") >> 1)
        fresh = ctx.evaluator.features(ctx.evaluator.truth_sample(n, g))
        check_enough_samples(len(fresh), fresh.shape[1])
        mu, cov = mean_cov(fresh.numpy())
        mu_t, cov_t = (np.asarray(t, dtype=np.float64) for t in ctx.evaluator.target_stats())
        return {"value": frechet_distance(mu, cov, mu_t, cov_t), "n": n}
