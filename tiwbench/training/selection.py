"""Checkpoint selection: which of a run's EMA snapshots a cell reports (``train.select_every``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def select_checkpoint(ema: torch.nn.Module, snapshots: dict[int, dict], score: Callable[[], float],
                      higher_is_better: bool = False) -> dict:
    """Load each snapshot into ``ema`` in step order and ``score`` it; leave the best one loaded.

    Ties and non-finite scores go to the earliest step, so a longer run with the same snapshots
    chooses the same one unless a later snapshot is strictly better. Returns the chosen step and
    every step's score (the validation curve, kept in the record).
    """
    values = {}
    for step in sorted(snapshots):
        ema.load_state_dict(snapshots[step])
        values[step] = float(score())
    sign = -1.0 if higher_is_better else 1.0
    finite = [k for k in values if math.isfinite(values[k])]
    best = min(finite, key=lambda k: (sign * values[k], k)) if finite else max(values)
    ema.load_state_dict(snapshots[best])
    return {"step": best, "values": {str(k): v for k, v in values.items()}}
