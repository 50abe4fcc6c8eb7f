"""Data-parallel training through torch.distributed (launched by torchrun), and the CLI's relaunch.

Every rank runs the same sweep. Each training step every rank draws the *same* global batch from
the shared generator and keeps a contiguous slice of it, so the noise and σ of every sample do not
depend on the world size; DDP averages the gradients. Sampling splits the per-sample seeds across
ranks and gathers them in order. Only rank 0 writes records. Outside torchrun every helper is a
no-op, so the single-process path is unchanged.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True inside a process started by torchrun (it sets these variables)."""
    return all(v in os.environ for v in ENV_VARS)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "cpu", timeout_s: float = 1800.0) -> str:
    """Join the process group torchrun prepared; return this rank's device.

    NCCL for CUDA (one GPU per local rank), gloo on the CPU.
    """
    if not launched() or dist.is_initialized():
        return device
    local = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int) -> slice:
    """This rank's contiguous part of n items (sizes differ by at most one)."""
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return slice(lo, lo + base + (1 if r < extra else 0))


def wrap(net: torch.nn.Module, device: str) -> torch.nn.Module:
    """DDP-wrap ``net`` when data-parallel; attributes the losses read (sigma_data) stay visible."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    ddp = DDP(net, device_ids=ids, forward_sync_buffers=False)  # buffers are constants
    if hasattr(net, "sigma_data"):
        ddp.sigma_data = net.sigma_data
    if hasattr(net, "kernel"):
        ddp.kernel = net.kernel
    return ddp


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device) -> bool:
    """True if ``flag`` is true on some rank, so that every rank takes the same branch."""
    if not active():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)) > 0)


def gather_cat(t: torch.Tensor, n_total: int) -> torch.Tensor:
    """Concatenate every rank's ``shard(n_total)`` part of a tensor in rank order, on every rank."""
    if not active():
        return t
    w, r = world_size(), rank()
    sizes = [(n_total // w) + (1 if i < n_total % w else 0) for i in range(w)]
    assert len(t) == sizes[r], (len(t), sizes)
    home = t.device
    if dist.get_backend() == "nccl":  # NCCL moves device tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    pad = t.new_zeros((max(sizes) - len(t), *t.shape[1:]))
    parts = [t.new_empty((max(sizes), *t.shape[1:])) for _ in range(w)]
    dist.all_gather(parts, torch.cat([t, pad]).contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(home)


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank hold rank 0's parameters and buffers (e.g. a ratio model trained on each)."""
    if not active() or not isinstance(module, torch.nn.Module):
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


FAULT_ENV = "TIWBENCH_TEST_FAULT_RANK"  # tests only: "<rank>:<where>" makes that rank raise there


def injected_fault(where: str) -> None:
    """Raise on the rank named by ``$TIWBENCH_TEST_FAULT_RANK`` (tests of :func:`abort_job` only)."""
    if os.environ.get(FAULT_ENV) == f"{rank()}:{where}" and active():
        raise RuntimeError(f"injected fault on rank {rank()} at {where}")


def abort_job(message: str) -> None:
    """End this rank's process at once, after its failure was recorded.

    The other ranks are blocked in a collective that this rank will never join, and would wait for
    the process-group timeout (30 min); a rank's exit makes torchrun stop them all within seconds.
    Exiting without Python's shutdown avoids a destroy_process_group that waits for them too.
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """The command that re-runs this CLI invocation under torchrun on one node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "tiwbench", *argv]


def slice_batch(batch, part: slice):
    """A training Batch restricted to ``part`` (its D_bias indices found again, on the host)."""
    import dataclasses

    return dataclasses.replace(batch, y=batch.y[part], is_ref=batch.is_ref[part], sigma=batch.sigma[part],
                               noise=batch.noise[part], bias_idx_=None)
