"""Checkpoint selection: which of a run's EMA snapshots a cell reports (``train.select_every``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tiwbench.best_step import best_step


def select_checkpoint(ema: torch.nn.Module, snapshots: dict[int, dict], score: Callable[[], float],
                      higher_is_better: bool = False) -> dict:
    """Load each snapshot into ``ema`` in step order and ``score`` it; leave the best one loaded.

    The choice is :func:`tiwbench.best_step.best_step` (best finite score, earliest among equals; the
    last step when none is finite). Returns the chosen step and
    every step's score (the validation curve, kept in the record).
    """
    values = {}
    for step in sorted(snapshots):
        ema.load_state_dict(snapshots[step])
        values[step] = float(score())
    best = best_step(values, higher_is_better)
    ema.load_state_dict(snapshots[best])
    return {"step": best, "values": {str(k): v for k, v in values.items()}}
