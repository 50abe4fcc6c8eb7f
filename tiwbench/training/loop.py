"""The score-network training loop: draws batches, calls the method's loss, reduces, steps."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tiwbench import integrity
from tiwbench.config import TrainConfig
from tiwbench.diffusion.losses import Batch, device_generator
from tiwbench.training import distributed, preemption


class NonFiniteLoss(FloatingPointError):
    def __init__(self, step: int):
        self.step = step
        super().__init__(f"non-finite loss at step {step}; lower train.lr or raise train.grad_clip's strictness")


class CellTimeout(TimeoutError):
    def __init__(self, step: int, limit: float):
        self.step = step
        super().__init__(f"cell exceeded its time limit of {limit:.0f} s at step {step}; raise train.time_limit")


def effective_sample_size(weight: torch.Tensor) -> torch.Tensor:
    """(Σw)² / Σw², as a fraction of the batch: 1 for uniform weights, 1/B for one dominant weight."""
    return weight.sum() ** 2 / (weight.pow(2).sum() * len(weight)).clamp_min(1e-30)


def ema_beta(step: int, halflife: float, rampup: float = 0.0) -> float:
    """EMA decay of the update after ``step`` steps done. As EDM's training loop, the half-life is
    min(halflife, step · rampup), so the random initial weights do not linger (their share would be
    0.5^(steps/half-life) without it); rampup 0 keeps the fixed half-life."""
    h = max(float(halflife), 1.0)
    if rampup > 0:
        h = min(h, step * rampup)
    return 0.5 ** (1 / h) if h > 0 else 0.0


def train_score(method, net, x: torch.Tensor, is_ref: torch.Tensor, ratio, cfg: TrainConfig,
                generator: torch.Generator, device="cpu",
                progress: Callable[[int, int], None] | None = None,
                checkpoint: Path | None = None, snapshots: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``net`` with ``method.loss``; return the EMA network and training statistics.

    With ``cfg.select_every``, ``snapshots`` (a dict) receives {step: EMA state on the CPU} every that
    many steps and at the last; the first steps never depend on ``cfg.steps``, so a run of twice the
    budget holds this run's snapshots bit for bit.

    Batches are drawn uniformly from (x, is_ref), so D_ref and D_bias are mixed in proportion to
    their sizes (METHOD.md §4). The data and every draw (indices, σ, noise) live on ``device``,
    from a generator there, so a step is launches only; methods see the whole batch, D_ref rows
    masked, never a data-dependent shape.
    """
    net.to(device).train()
    cuda = str(device).startswith("cuda")
    if cuda:  # every step has the same shapes (methods see the whole batch): each is tuned once
        torch.backends.cudnn.benchmark = True
    fast_layout(net, cfg, device)  # the EMA copy (so the sampler) inherits the layout
    fast_layout(ratio, cfg, device)  # the ratio model sees the score network's batches
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    x, is_ref = x.to(device), is_ref.to(device)
    generator = device_generator(generator, device)  # the one whose state a checkpoint saves
    if cfg.compile:
        compile_networks(net, ratio)
    model = distributed.wrap(net, device)  # DDP under torchrun: gradients averaged over ranks
    world, part = distributed.world_size(), distributed.shard(cfg.batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)  # one kernel for all tensors: 3x faster step
    ema_params, net_params = list(ema.parameters()), list(net.parameters())
    losses = torch.zeros(cfg.steps, device=device)
    start = time.monotonic()
    checked = first = 0
    if checkpoint is not None and Path(checkpoint).exists():
        first = checked = load_checkpoint(checkpoint, net, ema, opt, generator, losses, snapshots)
    for step in range(first, cfg.steps):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=generator, device=generator.device)
        batch = Batch.draw(x[idx], is_ref[idx], generator, kernel=getattr(net, "kernel", None))
        if world > 1:  # every rank drew the same global batch; it keeps its own part
            batch = distributed.slice_batch(batch, part)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.lr_warmup, 1))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and cuda):
            loss = method.loss(model, batch, ratio)
        loss = loss.reshape(len(loss), -1).sum(dim=1)  # per-sample sum ...
        # ... global batch mean: each rank's Σ·world/B, which DDP's gradient average turns into Σ/B
        loss = loss.mean() if world == 1 else loss.sum() * (world / cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            beta = ema_beta(step, cfg.ema_halflife, cfg.ema_rampup)
            torch._foreach_lerp_(ema_params, net_params, 1 - beta)  # one fused op, not one per tensor
        losses[step] = loss.detach()
        if snapshots is not None and cfg.select_every and ((step + 1) % cfg.select_every == 0 or step + 1 == cfg.steps):
            snapshots[step + 1] = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
        if (step + 1) % cfg.check_every == 0 or step + 1 == cfg.steps:
            bad = ~torch.isfinite(distributed.all_reduce_sum(losses[checked : step + 1]))
            if bad.any():
                raise NonFiniteLoss(checked + int(bad.nonzero()[0]))
            checked = step + 1
            late = bool(cfg.time_limit) and time.monotonic() - start > cfg.time_limit
            if distributed.any_rank(late, device):  # all ranks stop together
                raise CellTimeout(step + 1, cfg.time_limit)
        if checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < cfg.steps and distributed.is_main():
            save_checkpoint(checkpoint, step + 1, net, ema, opt, generator, losses, snapshots)
        if preemption.pending():  # preempted or at the time limit: save, then let the job be requeued
            if checkpoint is not None and distributed.is_main():
                save_checkpoint(checkpoint, step + 1, net, ema, opt, generator, losses, snapshots)
            preemption.release()
        if progress is not None:
            progress(step + 1, cfg.steps)
    if world > 1:
        losses = distributed.all_reduce_sum(losses) / world  # the global batch's loss per step
    tail = losses[-max(1, cfg.steps // 10):]
    return ema, {"final_loss": float(tail.mean()), "steps": cfg.steps, "seconds": time.monotonic() - start,
                 "resumed_from_step": first}


def fast_layout(module, cfg: TrainConfig, device) -> None:
    """Channels-last memory for image networks on CUDA under ``train.channels_last`` (faster convolutions
    on tensor cores); a no-op on the CPU, for MLPs and for a ratio that is no module (exact ratios)."""
    if cfg.channels_last and str(device).startswith("cuda") and isinstance(module, torch.nn.Module):
        module.to(memory_format=torch.channels_last)


def compile_networks(net: torch.nn.Module, ratio=None) -> None:
    """``train.compile``: torch.compile of the score network and of the ratio model's network, in place
    (parameter names, so checkpoints and the EMA copy, stay as they are)."""
    net.compile()
    if isinstance(getattr(ratio, "net", None), torch.nn.Module):
        ratio.net.compile()


def sampling_network(ema: torch.nn.Module, sample_cfg) -> torch.nn.Module:
    """The trained (EMA) network as the sampler runs it: compiled under ``sample.compile``."""
    if sample_cfg.compile:
        ema.compile()
    return ema


def save_checkpoint(path: Path, step: int, net, ema, opt, generator: torch.Generator, losses,
                    snapshots: dict | None = None) -> None:
    """Everything needed to continue bit-for-bit: weights, EMA, optimiser, both RNG states, and the
    EMA snapshots kept so far for checkpoint selection."""
    state = {"step": step, "net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses.cpu(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if snapshots:
        state["snapshots"] = {str(k): v for k, v in snapshots.items()}
    state["digest"] = integrity.tensors_digest(state)  # checked on load: a damaged file is not resumed
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def _read_checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = state.pop("digest", None)
    if digest is not None and digest != integrity.tensors_digest(state):
        raise integrity.Damaged("content does not match the hash saved with it")
    return state


def load_checkpoint(path: Path, net, ema, opt, generator: torch.Generator, losses,
                    snapshots: dict | None = None) -> int:
    """The step to continue from; 0 (start afresh, nothing changed) when the file is damaged."""
    state = integrity.load_or_move_aside(Path(path), _read_checkpoint, "training checkpoint")
    if state is None:
        return 0
    net.load_state_dict(state["net"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():  # dropout on the GPU draws from these
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    losses.copy_(state["losses"].to(losses.device))
    if snapshots is not None:
        snapshots.update({int(k): v for k, v in state.get("snapshots", {}).items()})
    return int(state["step"])


def save_network(path: Path, ema: torch.nn.Module, info: dict) -> None:
    """The finished (EMA) network and its training statistics, saved before sampling: a cell preempted
    after training then repeats only sampling and metrics (:func:`load_network`)."""
    import json

    state = {"ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()}, "info": json.dumps(info, default=str)}
    state["digest"] = integrity.tensors_digest(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_network(path: Path, ema: torch.nn.Module) -> dict | None:
    """Load a network saved by :func:`save_network` into ``ema``; its training statistics, or None when
    there is none (or it is damaged: moved aside, and the cell trains again)."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    state = integrity.load_or_move_aside(path, _read_checkpoint, "trained network")
    if state is None:
        return None
    ema.load_state_dict(state["ema"])
    return json.loads(state["info"])


@torch.no_grad()
def weight_stats(method, ratio, x: torch.Tensor, is_ref: torch.Tensor, generator: torch.Generator,
                 n_batches: int = 8, batch_size: int = 256, kernel=None) -> dict:
    """Mean effective sample size of the per-sample weights over a few fresh batches (σ from ``kernel``)."""
    if ratio is None or method.ratio is None or not method.per_sample_weights:
        return {"ess": 1.0}
    ess = []
    dev = next(ratio.parameters()).device if isinstance(ratio, torch.nn.Module) else "cpu"  # the ratio's device
    for _ in range(n_batches):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        b = Batch.draw(x[idx], is_ref[idx], generator, kernel=kernel)
        w = torch.ones(batch_size, dtype=torch.float64)
        bi = b.bias_idx
        xin = b.x[bi] if method.ratio == "time" else b.y[bi]
        w[bi] = ratio.log_ratio(xin.to(dev), b.sigma[bi].to(dev)).double().cpu().exp()
        if "alpha" in method.options:
            w[bi] = w[bi] ** method.options["alpha"]
        ess.append(float(effective_sample_size(w)))
    return {"ess": sum(ess) / len(ess)}
