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


def selection_sigmas(sample_cfg, kernel=None) -> torch.Tensor:
    """The noise levels a held-out denoising loss is taken at: the sampler's own grid (EDM's ρ-spaced steps
    from sample.sigma_max to sample.sigma_min, or ``kernel``'s), so the score weighs the levels sampling visits."""
    from tiwbench.diffusion.sampler import edm_time_steps

    if kernel is None:
        t = edm_time_steps(sample_cfg.steps, sample_cfg.sigma_min, sample_cfg.sigma_max, sample_cfg.rho)
        return t[:-1].float()
    return kernel.sigma(kernel.time_steps(sample_cfg.steps)[:-1]).float()


@torch.no_grad()
def held_out_loss(net: torch.nn.Module, held: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor,
                  batch_size: int = 2048, device="cpu") -> float:
    """The unweighted denoising loss of ``net`` on held-out clean points: the mean over points, noise levels
    and elements of λ(σ)‖D(y + σn; σ) − y‖² (:func:`tiwbench.diffusion.losses.dsm_loss` with no weight and no
    shift), at every σ of ``sigmas`` with ``noise`` [len(sigmas), len(held), ...] fixed by the caller, so
    that every snapshot (and every method of a seed) is scored on the same draws."""
    from tiwbench.diffusion.losses import Batch, dsm_loss

    y = held.unsqueeze(0).expand(len(sigmas), *held.shape).reshape(-1, *held.shape[1:])
    sigma = sigmas.repeat_interleave(len(held))
    n = noise.reshape(-1, *held.shape[1:])
    total, count = 0.0, 0
    for i in range(0, len(y), batch_size):
        batch = Batch(y=y[i : i + batch_size].to(device), is_ref=torch.ones(len(y[i : i + batch_size]),
                      dtype=torch.bool, device=device), sigma=sigma[i : i + batch_size].to(device),
                      noise=n[i : i + batch_size].to(device))
        loss = dsm_loss(net, batch).double()
        total += float(loss.sum())
        count += loss.numel()
    return total / count
