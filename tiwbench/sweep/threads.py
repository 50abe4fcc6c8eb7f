"""Intra-op threads per process: one unless told otherwise, and part of every cell's configuration.

One thread is the default because a process with more threads than the cores left free to it runs
many times slower (on 2 shared cores a cifar10_lt smoke sweep took 44 min with 2 threads, under 5 min
with one), and because the thread count changes the order in which kernels sum, hence the numbers:
it is recorded in each cell's config and hash, so a resumed sweep never mixes thread counts.
"""

from __future__ import annotations

import os

import torch

AUTO = 0  # --threads 0: the cores free now, shared among this machine's processes of the run


def free_cores() -> int:
    """Cores not busy by the 1-minute load average (at least 1)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: assume idle
        load = 0.0
    return max(1, int(n - round(load)))


def local_procs() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def resolve_threads(requested: int) -> int:
    """The thread count a cell runs and is recorded with: ``requested`` (≥ 1), or for 0 the free cores
    divided among this machine's processes."""
    if requested < 0:
        raise ValueError(f"--threads {requested}: give 1 or more, or 0 for the cores free now")
    if requested > 0:
        return requested
    return max(1, free_cores() // max(local_procs(), 1))


def apply_threads(cell) -> None:
    """Called per group: run the group with its cells' recorded thread count."""
    n = int(getattr(cell, "threads", 1) or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def cells_threads(cells: list) -> int:
    """The most threads any of ``cells`` uses (a submitted job's share of the cores)."""
    return max([int(getattr(c, "threads", 1) or 1) for c in cells] or [1])
