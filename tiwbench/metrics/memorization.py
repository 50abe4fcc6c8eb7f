"""``memorized``: the share of generated samples that copy a training sample (Gu et al. 2023, "On
Memorization in Diffusion Models"): ‖x − NN₁‖ / ‖x − NN₂‖ < 1/3, NN₁ and NN₂ the two nearest samples of
the data the method trained on. In data space for vectors; in pixel space and in the evaluator's feature
space for images."""

from __future__ import annotations

from typing import Any

import torch

from tiwbench.metrics.base import EvalContext, Metric, MetricError

RATIO = 1.0 / 3.0


def nearest_two(samples: torch.Tensor, train: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Distances to the two nearest training samples, [N, 2], in batches of both sets (no N×M matrix)."""
    x, t = samples.flatten(1).double(), train.flatten(1).double()
    if len(t) < 2:
        raise MetricError(f"memorized needs at least 2 training samples, got {len(t)}")
    out = []
    for i in range(0, len(x), batch):
        best = torch.full((len(x[i:i + batch]), 2), float("inf"), dtype=torch.float64)
        for j in range(0, len(t), 4 * batch):
            d = torch.cdist(x[i:i + batch], t[j:j + 4 * batch])
            best = torch.cat([best, d], 1).topk(2, dim=1, largest=False).values
        out.append(best)
    return torch.cat(out)


def memorized_share(samples: torch.Tensor, train: torch.Tensor, ratio: float = RATIO) -> float:
    d = nearest_two(samples, train)
    copied = (d[:, 0] < ratio * d[:, 1]) | (d[:, 0] == 0)  # an exact copy of a duplicated point counts
    return float(copied.double().mean())


class Memorized(Metric):
    name = "memorized"
    higher_is_better = False
    description = "share of samples with ‖x−NN₁‖/‖x−NN₂‖ < 1/3 over the method's training data (Gu et al. 2023)"
    # against each method's own training data (the oracle's is the largest): not a distance to the truth
    oracle_leads = False

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return ctx.train_data is not None

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        if ctx.train_data is None:
            raise MetricError("memorized needs the method's training data; the runner passes it")
        train = ctx.train_data.cpu()
        value = memorized_share(ctx.samples.cpu(), train)
        res: dict[str, Any] = {"value": value, "space": "data", "n_train": len(train)}
        if ctx.samples.ndim == 4:  # images: pixel space above, and the evaluator's feature space
            feats = torch.cat([ctx.evaluator.features(train[i:i + 512]).double().cpu()
                               for i in range(0, len(train), 512)])
            res["space"] = "pixel"
            res["feature_space"] = memorized_share(ctx.features().cpu(), feats)
        return res
