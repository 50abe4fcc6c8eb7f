"""Intra-op threads per process: chosen per group from its dataset's kind unless fixed by --threads."""

from __future__ import annotations

import os

import torch

from tiwbench.registry import DATASETS

_FIXED_THREADS = 0  # set by --threads; 0 = choose per group from the dataset's kind


def _threads_for(kinds: set[str], local_procs: int) -> int:
    """Intra-op threads per process: 1 when every network is a small MLP on vector data (on 2 cores a
    toy2d step ran 8-25x slower with 2 threads once other processes competed for the cores); otherwise
    the cores shared among this machine's processes."""
    if kinds <= {"vector", "exact"}:
        return 1
    return max(1, (os.cpu_count() or 1) // max(local_procs, 1))


def _local_procs() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def configure_threads(fixed: int) -> None:
    global _FIXED_THREADS
    _FIXED_THREADS = fixed
    if fixed > 0:
        torch.set_num_threads(fixed)


def apply_threads(dataset) -> None:
    """Called per group: the auto choice follows the group's dataset, so a suite mixing toy2d and
    images gives each the threads that suit it."""
    if _FIXED_THREADS <= 0:
        torch.set_num_threads(_threads_for({getattr(dataset, "kind", "image")}, _local_procs()))


def auto_threads(cells: list, local_procs: int = 1) -> int:
    """The most threads any group of ``cells`` will use (a submitted job's share of the cores)."""
    return _threads_for({getattr(DATASETS.get(c.dataset), "kind", "image") for c in cells}, local_procs)
