"""Trained networks reused across groups: a content-addressed cache for training that does not depend on
the group's reference set.

The `oracle` trains on the split's oracle set, which is drawn from a stream of its own (the same whatever
ref_frac): its training is the same at every reference size, so a sweep over D_ref sizes trained it once
per size. Here it is trained once and kept under ``<cache_dir>/networks/<key>.pt``, where the key is the
sha256 of everything the training depends on: the training data's content hash, the dataset and its
parameters (the network's shape), the method and its options, the training budget, the kernel, the seed,
the thread count and device, the torch version and the source of the diffusion and training code. A change
to any of them is another key, so a miss, never a stale network. Concurrent jobs of one sweep wait for each
other on a lock per key, so each network is trained once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import torch

from tiwbench import integrity
from tiwbench.records import atomic_write_bytes


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the code a network's training runs (tiwbench/diffusion, tiwbench/training)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted([*(root / "diffusion").glob("*.py"), *(root / "training").glob("*.py")]):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def network_key(depends_on: dict[str, Any]) -> str:
    """The cache key of a training described by ``depends_on`` (plain data), with the code and torch version."""
    full = {**depends_on, "code": code_digest(), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()


class Entry:
    def __init__(self, path: Path):
        self.path = path
        self.waited_s = 0.0

    def load(self, ema: torch.nn.Module) -> tuple[dict, dict[int, dict]] | None:
        """Load the cached network into ``ema``: (training info, snapshots), or None on a miss (a damaged
        file is moved aside and counts as a miss)."""
        if not self.path.is_file():
            return None
        state = integrity.load_or_move_aside(self.path, _read, "cached network")
        if state is None:
            return None
        ema.load_state_dict(state["ema"])
        return json.loads(state["info"]), {int(k): v for k, v in state["snapshots"].items()}

    def store(self, ema: torch.nn.Module, info: dict, snapshots: dict[int, dict]) -> None:
        import io

        state = {"ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
                 "snapshots": {str(k): {n: t.detach().cpu() for n, t in s.items()} for k, s in snapshots.items()},
                 "info": json.dumps(info, default=str)}
        state["digest"] = integrity.tensors_digest(state)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())


def _read(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = state.pop("digest", None)
    if digest is None or digest != integrity.tensors_digest(state):
        raise integrity.Damaged("content does not match the hash saved with it")
    return state


@contextlib.contextmanager
def cached(cache_dir: Path, key: str) -> Iterator[Entry]:
    """The cache entry of ``key``, held under its lock: load, or train and store, inside the block."""
    path = Path(cache_dir) / "networks" / f"{key[:32]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with filelock.FileLock(str(path.with_suffix(".pt.lock"))):
        entry = Entry(path)
        entry.waited_s = time.monotonic() - t0  # another job training the same network: part of this cell's time
        yield entry
