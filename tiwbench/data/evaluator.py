"""Domain evaluators for image datasets (METHOD.md §7): a small CNN classifier trained once on the
dataset's labelled unbiased data. Its pooled penultimate features define FD; its predictions the
bias metric. Trained weights are cached by content hash of (data, architecture, training config),
as a state_dict plus a JSON sidecar (no pickled code), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tiwbench import progress
from tiwbench.data.base import DataError, Evaluator, content_hash
from tiwbench.integrity import Damaged, load_or_move_aside
from tiwbench.records import atomic_write_json, shared_temp

ARCH_VERSION = 1  # bump when EvalCNN changes, so old cache entries are not reused


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4), ch)  # per-sample normalisation: features don't depend on the batch


class EvalCNN(nn.Module):
    """The evaluator's classifier; also the documented architecture of a discriminator's frozen
    feature extractor (``ImageDiscriminator(feature_extractor=path)``).

    conv3×3(C→w) GN SiLU, conv3×3 GN SiLU, then while the resolution exceeds 4: a stride-2 conv3×3
    doubling the width (at most 8w) and a conv3×3, each with GN and SiLU. ``features`` is the spatial
    mean of the last activations ([B, feature_dim]); ``forward`` a linear head on them.
    For 8×8 and w = 32: 64 features; for 32×32: 256.
    """

    def __init__(self, in_channels: int = 1, resolution: int = 8, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.kwargs = {"in_channels": in_channels, "resolution": resolution, "num_classes": num_classes,
                       "width": width}
        layers: list[nn.Module] = []
        cur, res = width, resolution

        def conv(cin, cout, stride=1):
            layers.extend([nn.Conv2d(cin, cout, 3, stride=stride, padding=1), _gn(cout), nn.SiLU()])

        conv(in_channels, width)
        conv(width, width)
        while res > 4:
            nxt = min(2 * cur, 8 * width)
            conv(cur, nxt, stride=2)
            conv(nxt, nxt)
            cur, res = nxt, (res + 1) // 2
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = cur
        self.head = nn.Linear(cur, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_classifier(net: EvalCNN, path: Path, info: dict[str, Any]) -> None:
    """``path`` (state_dict) then ``path.json`` (architecture + info), each by temp file + rename;
    the sidecar comes last, so its presence means the weights are complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = shared_temp(path.parent, f".{path.name}.")
    os.close(fd)
    try:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(Path(f"{path}.json"), {"architecture": "EvalCNN", "arch_version": ARCH_VERSION,
                                              "kwargs": net.kwargs, "info": info})


def load_classifier(path: str | Path) -> EvalCNN:
    """An :class:`EvalCNN` from ``path`` (a state_dict) and its sidecar ``path.json``."""
    path = Path(path)
    side = Path(f"{path}.json")
    if not path.is_file() or not side.is_file():
        raise DataError(f"expected an EvalCNN state_dict at {path} and its sidecar {side} "
                        "(as the evaluator cache writes them: results/cache/evaluators/*.pt)")
    meta = json.loads(side.read_text())
    if meta.get("architecture") != "EvalCNN":
        raise DataError(f"{side} describes architecture {meta.get('architecture')!r}, not 'EvalCNN'")
    net = EvalCNN(**meta["kwargs"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def _load_checked(path: Path) -> tuple[EvalCNN, dict[str, Any]]:
    """The cached classifier and its info, its weights checked against the hash saved with them."""
    net = load_classifier(path)
    info = json.loads(Path(f"{path}.json").read_text())["info"]
    if info.get("checkpoint_hash") not in (None, state_hash(net)):
        raise Damaged("weights do not match the checkpoint_hash in the sidecar")
    return net, info


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: dict[str, Any],
                     device: str = "cpu") -> tuple[EvalCNN, dict[str, Any]]:
    """Train on all but a held-out ``cfg['holdout']`` fraction; report held-out accuracy."""
    t0 = time.monotonic()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(images), generator=g)
    if cfg.get("max_images"):  # a budget (smoke profiles): a seeded subset of the target
        perm = perm[: cfg["max_images"]]
    n_test = max(1, int(round(cfg["holdout"] * len(perm))))
    test, train = perm[:n_test], perm[n_test:]
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(0)
        net = EvalCNN(images.shape[1], images.shape[2], num_classes, cfg["width"]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = max(1, len(train) // cfg["batch_size"])
    total = cfg["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.15)
    net.train()
    report = progress.phase(f"evaluator training ({len(train)} images, {cfg['epochs']} epochs)", total)
    done = 0
    for _ in range(cfg["epochs"]):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(steps_per_epoch):
            idx = order[i * cfg["batch_size"] : (i + 1) * cfg["batch_size"]]
            x, y = images[idx].to(device), labels[idx].to(device)
            if cfg.get("flip"):
                flip = torch.rand(len(x), generator=g).to(device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            report(done, total)
    net.eval()
    pred = batched(net, images[test], device).argmax(dim=1).cpu()
    acc = float((pred == labels[test]).double().mean())
    return net, {"accuracy": acc, "held_out": n_test, "trained_on": len(train),
                 "train_seconds": round(time.monotonic() - t0, 2)}


@torch.no_grad()
def batched(fn, x: torch.Tensor, device: str = "cpu", batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)])


class ImageEvaluator(Evaluator):
    """FD features and attribute predictions from the dataset's trained :class:`EvalCNN`."""

    def __init__(self, network: EvalCNN, target: torch.Tensor, target_proportions: torch.Tensor,
                 info: dict[str, Any], device: str = "cpu"):
        self.network = network.to(device).eval()
        self.target = target
        self.device = device
        self.feature_dim = network.feature_dim
        self.num_classes = network.kwargs["num_classes"]
        self.target_proportions = target_proportions.to(torch.float64)
        self.info = info
        self.loaded_from_cache = False
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_dataset(cls, dataset, cache_dir: str | Path | None = None, device: str = "cpu") -> ImageEvaluator:
        """Train once per (data, architecture, training config), or load that from ``cache_dir``."""
        images, labels = dataset.target_data()
        cfg = dict(dataset.evaluator_config)
        arch = {"architecture": "EvalCNN", "arch_version": ARCH_VERSION, "in_channels": images.shape[1],
                "resolution": images.shape[2], "num_classes": dataset.num_classes, "width": cfg["width"]}
        key_src = {"data": content_hash(images, labels), "arch": arch, "train": cfg, "torch": torch.__version__}
        key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / "evaluators" / f"{dataset.name}-{key}.pt" if cache_dir is not None else None
        cached = None
        if path is not None and Path(f"{path}.json").is_file() and path.is_file():
            cached = load_or_move_aside(path, _load_checked, "evaluator cache", companions=(Path(f"{path}.json"),))
        if cached is not None:
            ev = cls(*cached[:1], images, dataset.target_proportions, cached[1], device)
            ev.loaded_from_cache = True
            return ev
        net, info = train_classifier(images, labels, dataset.num_classes, cfg, device)
        net = net.cpu()
        info = {"classifier": f"EvalCNN(width={cfg['width']})", **info, "feature_dim": net.feature_dim,
                "cache_key": key, "data_hash": key_src["data"], "checkpoint_hash": state_hash(net)}
        if path is not None:
            save_classifier(net, path, info)
        return cls(net, images, dataset.target_proportions, info, device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return batched(self.network.features, x, self.device).cpu().to(torch.float64)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return batched(self.network, x, self.device).argmax(dim=1).cpu()

    def target_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stats is None:
            f = self.features(self.target)
            mean = f.mean(dim=0)
            centred = f - mean
            self._stats = mean, centred.T @ centred / (len(f) - 1)
        return self._stats
