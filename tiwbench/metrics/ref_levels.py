"""Reference levels (METHOD.md §5a), recorded beside every cell: what a method would score that
reproduced D_ref (or the truth) exactly, sampling noise of its n_gen generated samples included. They
are levels to read a metric against, not bounds: a method can land nearer the truth by chance or by
smoothing.

- ``bias_ref_level``: the root-mean-square ``bias`` of n_gen samples whose labels are drawn from D_ref's
  empirical proportions p_ref. With p̂ = Multinomial(n_gen, p_ref) / n_gen, E p̂ = p_ref and
  E‖p̂ − p_ref‖² = Σ_k p_k(1 − p_k) / n_gen = (1 − ‖p_ref‖²) / n_gen, so
  E‖p̂ − p*‖² = ‖p_ref − p*‖² + (1 − ‖p_ref‖²) / n_gen  (the cross term has mean 0).
  The value is the root of that; the mean of ‖p̂ − p*‖ lies a little below it (Jensen).
- ``bias_ref``: the generated proportions against D_ref's empirical ones, ‖p̂ − p_ref‖₂: how far a method
  is from the information it had, beside ``bias`` (against the truth).
- ``fd_ref_level``: on exact mixtures, the fd of n_gen fresh samples of the truth: what a method that
  reproduced the truth exactly would score with as many samples.

Records written before these names carry ``bias_floor`` (‖p_ref − p*‖₂ alone, no sampling noise) and
``fd_floor`` (the same quantity as ``fd_ref_level``); each level's ``read_legacy`` reads them as today's.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from tiwbench.metrics.base import EvalContext, Metric, attribute_bias, check_enough_samples, frechet_distance, mean_cov


def ref_proportions(ctx: EvalContext) -> torch.Tensor:
    k = int(ctx.evaluator.num_classes)
    labels = ctx.split.ref_labels.long().flatten()
    return torch.bincount(labels, minlength=k).double() / max(len(labels), 1)


def bias_ref_level(label_bias: float, p_ref: Any, n_gen: int) -> float:
    """sqrt(‖p_ref − p*‖² + (1 − ‖p_ref‖²) / n_gen): the rms bias of n_gen samples labelled as D_ref."""
    p = np.asarray(p_ref, dtype=np.float64)
    return math.sqrt(label_bias ** 2 + max(1.0 - float(p @ p), 0.0) / n_gen)


def _labelled(ctx: EvalContext) -> bool:
    split = ctx.split
    if split is None or getattr(split, "ref_labels", None) is None or len(split.ref_labels) == 0:
        return False
    labels = split.ref_labels.long().flatten()
    k = getattr(ctx.evaluator, "num_classes", None)
    return k is not None and int(labels.min()) >= 0 and int(labels.max()) < int(k)


class BiasRefLevel(Metric):
    name = "bias_ref_level"
    higher_is_better = False
    description = "rms bias of as many samples as were generated, labelled as D_ref (a reference level, not a bound)"

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return _labelled(ctx)

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        p_ref = ref_proportions(ctx)
        label_bias = float(torch.linalg.vector_norm(p_ref - ctx.evaluator.target_proportions.double()))
        n_gen = len(ctx.samples)
        return {"value": bias_ref_level(label_bias, p_ref.numpy(), n_gen), "label_bias": label_bias,
                "n": n_gen, "proportions": p_ref.tolist(), "ref_size": len(ctx.split.ref_labels)}

    @staticmethod
    def read_legacy(entry: dict[str, Any], record: dict[str, Any]) -> float:
        """The level from an older record's ``bias_floor`` entry, which left out the sampling noise: added
        back from its stored proportions and the record's sample count (NaN where the record lacks them)."""
        n_gen = next((m.get("n") for m in record.get("metrics") or [] if m.get("name") == "fd_floor"), None)
        n_gen = n_gen or ((record.get("config") or {}).get("sample") or {}).get("n")
        value, props = entry.get("value"), entry.get("proportions")
        if value is None or props is None or not n_gen:
            return math.nan
        return bias_ref_level(float(value), props, int(n_gen))


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


class FDRefLevel(Metric):
    name = "fd_ref_level"
    higher_is_better = False
    description = "fd of as many fresh samples of the truth as were generated (exact mixtures; a reference level)"

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return hasattr(ctx.evaluator, "truth_sample")

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        n = len(ctx.samples)
        # seeded by the split, so every method of a group shows the same level
        tag = repr(sorted((ctx.split.hashes if ctx.split is not None else {}).items())).encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(tag).digest()[:8], "little") >> 1)
        fresh = ctx.evaluator.features(ctx.evaluator.truth_sample(n, g))
        check_enough_samples(len(fresh), fresh.shape[1])
        mu, cov = mean_cov(fresh.numpy())
        mu_t, cov_t = (np.asarray(t, dtype=np.float64) for t in ctx.evaluator.target_stats())
        return {"value": frechet_distance(mu, cov, mu_t, cov_t), "n": n}

    @staticmethod
    def read_legacy(entry: dict[str, Any], record: dict[str, Any]) -> float:
        """An older record's ``fd_floor``: the same quantity under its former name."""
        return math.nan if entry.get("value") is None else float(entry["value"])
