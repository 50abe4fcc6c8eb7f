"""What a sweep will cost on this machine, measured rather than guessed: one timed training step and
one timed denoiser evaluation of each dataset's actual networks, extrapolated to the profile's budget."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import torch

GPU_HINT = ("on a GPU: `tiwbench run ... --device cuda` (one GPU), `--launcher torchrun` (all GPUs of a node) "
            "or `--executor slurm --slurm-gpus 1` (one job per (dataset, ref_frac, seed) group)")


def _timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up: first calls allocate
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def cell_seconds(dataset, budget, probe_batch: int = 4) -> dict[str, float]:
    """Seconds of one cell's score training, sampling and ratio training on this CPU, from one step of
    each network on ``probe_batch`` images scaled linearly in the batch size (a lower bound on a CPU:
    larger batches do not get cheaper per image)."""
    from tiwbench.ratios.discriminator import make_ratio
    from tiwbench.training.denoiser import make_denoiser

    t, s, r = budget.train, budget.sample, budget.ratio
    x = torch.randn(probe_batch, *dataset.shape)
    sigma = torch.full((probe_batch,), 1.0)
    with torch.random.fork_rng(devices=[]):
        net = make_denoiser(dataset, t)
        ratio = make_ratio(dataset, r, time_dependent=True)

    def train_step():
        net.zero_grad(set_to_none=True)
        net(x, sigma).square().mean().backward()

    def ratio_step():
        ratio.net.zero_grad(set_to_none=True)
        ratio.logit(x, sigma).mean().backward()

    def denoise():
        with torch.no_grad():
            net(x, sigma)

    per_image_train = _timed(train_step) / probe_batch
    per_image_eval = _timed(denoise) / probe_batch
    per_image_ratio = _timed(ratio_step) / probe_batch
    return {"train": per_image_train * t.batch_size * t.steps,
            "sample": per_image_eval * s.n * (2 * s.steps - 1),
            "ratio": per_image_ratio * 2 * r.batch_size * r.steps}


def sweep_hours(cells: list[Any]) -> dict[str, float]:
    """Estimated hours per image dataset of ``cells`` (ratio models counted once per group)."""
    from tiwbench.registry import DATASETS

    per_ds: dict[str, float] = {}
    probes: dict[str, dict[str, float]] = {}  # one probe per distinct (dataset, budget): methods share it
    groups = set()
    for c in cells:
        ds = DATASETS.get(c.dataset)(**c.dataset_params)
        if ds.kind != "image":
            continue
        key = json.dumps([c.dataset, c.dataset_params, dataclasses.asdict(c.budget)], sort_keys=True, default=str)
        if key not in probes:
            probes[key] = cell_seconds(ds, c.budget)
        sec = probes[key]["train"] + probes[key]["sample"]
        if c.group not in groups:
            groups.add(c.group)
            sec += probes[key]["ratio"] * 2  # a time-dependent and a time-independent discriminator at most
        per_ds[c.dataset] = per_ds.get(c.dataset, 0.0) + sec / 3600
    return per_ds


def cpu_warning(cells: list[Any], device: str) -> str | None:
    """The line printed before a paper-profile image run on a CPU; None when there is nothing to say."""
    if device != "cpu" or not any(c.profile == "paper" for c in cells):
        return None
    hours = sweep_hours([c for c in cells if c.profile == "paper"])
    if not hours:
        return None
    parts = ", ".join(f"{ds} ≈ {h:,.0f} h" if h >= 1 else f"{ds} ≈ {h * 60:.0f} min" for ds, h in hours.items())
    return (f"note: the paper profile on this CPU will take about {parts} ({len(cells)} cells; measured from one "
            f"training step and one sampling step of each network, a lower bound). To run it {GPU_HINT}. "
            "Going on.")
