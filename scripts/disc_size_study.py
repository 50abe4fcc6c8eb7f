"""The paper profile's discriminator size, ``ratio.channels`` 32 against 128, measured on cifar10_lt data
at a reduced size on the CPU: per σ band the balanced accuracy and calibration (ECE) of d = P(ref | x, σ)
on fresh D_bias/D_ref draws, TIW-DSM's bias at a reduced budget with each (dsm_obs beside it), and the
share of the paper step's FLOPs that each discriminator's forward + input gradient adds.

    python scripts/disc_size_study.py --out results/disc_size.json [--data-root DIR] [--seeds 0,1]

Without --data-root it writes a class-structured archive in the CIFAR-10 python format (5 data batches,
uint8 pixels, pickled dicts) under --work and reads it through ``CIFAR10LT``: the real loader and split.
Reduced size: images average-pooled to ``--res`` (8: 16× fewer FLOPs for both nets), the discriminator
trained ``--ratio-steps`` steps, the score U-Net of the smoke profiles; both discriminators get the same
data, seeds and steps. The FLOP shares are counted on the full-size paper networks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from tiwbench.config import RatioConfig, TrainConfig, load_suite, resolve_budget
from tiwbench.data.cifar10 import CIFAR10LT
from tiwbench.data.evaluator import batched, train_classifier
from tiwbench.diffusion.sampler import edm_sampler
from tiwbench.metrics.base import attribute_bias
from tiwbench.ratios.diagnostics import ratio_diagnostics
from tiwbench.ratios.discriminator import RatioTrainConfig, make_ratio, train_ratio
from tiwbench.records import atomic_write_json
from tiwbench.registry import METHODS
from tiwbench.sweep.step_bench import dataset_shape, flop_counter, synthetic_data, train_step_flops
from tiwbench.training.denoiser import make_denoiser
from tiwbench.training.loop import train_score


def write_archive(folder: Path, per_batch: int, seed: int = 0) -> None:
    """CIFAR-10's python layout; class k: its own smooth random colour field (4×4 upsampled), varied per
    image in contrast, brightness and position, plus pixel noise: separable when clean, not when noisy."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.normal(0, 0.6, size=(10, 3, 4, 4))).float()
    fields = F.interpolate(base, size=(32, 32), mode="bicubic", align_corners=False)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = rng.permutation(np.arange(per_batch) % 10)
        contrast = rng.uniform(0.5, 1.5, size=(per_batch, 1, 1, 1))
        bright = rng.normal(0, 0.2, size=(per_batch, 1, 1, 1))
        img = fields.numpy()[labels] * contrast + bright + rng.normal(0, 0.3, size=(per_batch, 3, 32, 32))
        for j, (dy, dx) in enumerate(rng.integers(-3, 4, size=(per_batch, 2))):
            img[j] = np.roll(img[j], (int(dy), int(dx)), axis=(1, 2))
        data = np.clip((img + 1) * 127.5, 0, 255).astype(np.uint8).reshape(per_batch, 3072)
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [int(v) for v in labels],
                 b"data": data, b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes((folder / "data_batch_1").read_bytes())
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}, protocol=2))


def pool(x: torch.Tensor, res: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, res) if x.shape[-1] != res else x


def flop_shares(channels: list[int]) -> dict:
    """GFLOP a forward per image, and the share of the paper tiw_dsm step that the ratio model adds
    (forward + input gradient on the whole batch), at 32×32 with the paper score U-Net."""
    paper, _ = resolve_budget(load_suite("ref_size"), "paper", "cifar10_lt")
    ds = dataset_shape("cifar10_lt")
    torch.manual_seed(0)
    x, is_ref = synthetic_data(ds.shape, 4)
    budget = dataclasses.replace(paper, train=dataclasses.replace(paper.train, batch_size=2, amp=False,
                                                                  channels_last=False))
    dsm = train_step_flops("dsm_obs", ds, budget, x, is_ref, "cpu", {})
    out = {"dsm_step_gflop_per_image": dsm / 2e9}
    for ch in channels:
        ratio = make_ratio(ds, dataclasses.replace(paper.ratio, channels=ch), True).eval()
        with flop_counter() as counter:
            ratio.net(x[:1], torch.zeros(1))
        tiw = train_step_flops("tiw_dsm", ds, budget, x, is_ref, "cpu", {"time": ratio})
        out[f"ch{ch}"] = {"forward_gflop_per_image": counter.get_total_flops() / 1e9,
                          "parameters": sum(p.numel() for p in ratio.parameters()),
                          "tiw_step_share": (tiw - dsm) / tiw}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("results/disc_size.json"))
    ap.add_argument("--work", type=Path, default=Path("results/cache/disc_size"))
    ap.add_argument("--data-root", default="")
    ap.add_argument("--channels", default="32,128")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--res", type=int, default=8)
    ap.add_argument("--ref-frac", type=float, default=0.25)
    ap.add_argument("--n-bias", type=int, default=2000)
    ap.add_argument("--ratio-steps", type=int, default=200)
    ap.add_argument("--ratio-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--diag-n", type=int, default=500, help="draws a σ band for accuracy and ECE")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    channels = [int(c) for c in a.channels.split(",")]
    root = a.data_root
    if not root:
        root = str(a.work / "archive")
        if not (Path(root) / "cifar-10-batches-py" / "data_batch_5").is_file():
            write_archive(Path(root) / "cifar-10-batches-py", per_batch=2000)
    ds = CIFAR10LT(data_root=root, rho=0.01, n_bias=a.n_bias)
    shape = (3, a.res, a.res)
    view = type("Pooled", (), {"kind": "image", "shape": shape, "sigma_data": ds.sigma_data})()
    result = {"settings": vars(a) | {"out": str(a.out), "work": str(a.work), "data_root": root},
              "flops": flop_shares(channels), "runs": []}
    atomic_write_json(a.out, result)
    images, labels = ds.target_data()
    images = pool(images, a.res)
    ev_cfg = {**ds.evaluator_config, "width": 16, "epochs": 4, "flip": False}
    evaluator, ev_info = train_classifier(images, labels, ds.num_classes, ev_cfg)
    result["evaluator"] = ev_info
    score_cfg = TrainConfig(steps=a.train_steps, batch_size=a.train_batch, channels=16, channel_mult=[1, 2],
                            lr_warmup=20, ema_halflife=20, check_every=50)
    for seed in [int(s) for s in a.seeds.split(",")]:
        split = ds.split(a.ref_frac, seed)
        bias, ref = pool(split.bias, a.res), pool(split.ref, a.res)
        x = torch.cat([bias, ref])
        is_ref = torch.cat([torch.zeros(len(bias), dtype=torch.bool), torch.ones(len(ref), dtype=torch.bool)])
        cells = [("dsm_obs", None)] + [("tiw_dsm", ch) for ch in channels]
        for method, ch in cells:
            t0 = time.monotonic()
            row = {"seed": seed, "method": method, "channels": ch}
            ratio = None
            if ch is not None:
                torch.manual_seed(seed)
                ratio = make_ratio(view, RatioConfig(channels=ch), True)
                tcfg = RatioTrainConfig(steps=a.ratio_steps, batch_size=a.ratio_batch)
                row["ratio_fit"] = train_ratio(ratio, bias, ref, tcfg, torch.Generator().manual_seed(seed))
                row["ratio_seconds"] = time.monotonic() - t0
                row["per_sigma"] = ratio_diagnostics(ratio, bias, ref, torch.Generator().manual_seed(100 + seed),
                                                     n=a.diag_n)
            torch.manual_seed(1000 + seed)
            net = make_denoiser(view, score_cfg)
            ema, info = train_score(METHODS.get(method)(), net, x, is_ref, ratio, score_cfg,
                                    torch.Generator().manual_seed(seed))
            lat = torch.randn(a.samples, *shape, generator=torch.Generator().manual_seed(10_000 + seed))
            samples = edm_sampler(ema, lat, 12)
            pred = batched(evaluator, samples).argmax(dim=1)
            value, props = attribute_bias(pred, ds.target_proportions)
            row.update({"bias": value, "proportions": props, "final_loss": info["final_loss"],
                        "seconds": time.monotonic() - t0})
            result["runs"].append(row)
            atomic_write_json(a.out, result)  # each run on disk as it ends
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_sigma", "proportions")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
