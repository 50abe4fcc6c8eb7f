"""Checks a GPU session runs once beside `tiwbench bench`: train.compile gives the losses of eager mode,
and the bf16 sampler stays near float32, on the device. Prints one JSON object; exit 1 on a failed check.

    python scripts/gpu_checks.py --device cuda --out results/gpu/checks.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from tiwbench.config import load_suite, resolve_budget
from tiwbench.diffusion.sampler import edm_sampler
from tiwbench.ratios.discriminator import make_ratio
from tiwbench.records import atomic_write_json
from tiwbench.registry import METHODS
from tiwbench.sweep.step_bench import dataset_shape, synthetic_data
from tiwbench.training.denoiser import make_denoiser
from tiwbench.training.loop import train_score


def train_tiw(budget, ds, x, is_ref, device, compile_: bool) -> tuple[float, float]:
    """Final loss and the parameters' norm after 8 TIW-DSM steps."""
    torch.manual_seed(0)
    net = make_denoiser(ds, budget.train)
    torch.manual_seed(1)
    ratio = make_ratio(ds, budget.ratio, True).to(device).eval()
    cfg = dataclasses.replace(budget.train, steps=8, check_every=1, compile=compile_)
    _, info = train_score(METHODS.get("tiw_dsm")(), net, x, is_ref, ratio, cfg, torch.Generator().manual_seed(0),
                          device)
    return info["final_loss"], float(sum(p.detach().double().norm() ** 2 for p in net.parameters()) ** 0.5)


def save(path: Path | None, result: dict) -> None:
    if path is not None:
        atomic_write_json(path, result)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dataset", default="cifar10_lt")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n", type=int, default=256, help="images for the bf16 sampler check")
    a = ap.parse_args()
    budget, _ = resolve_budget(load_suite("ref_size"), "smoke", "digits_lt")  # small nets: compile is quick
    ds = dataset_shape("digits_lt")
    x, is_ref = synthetic_data(ds.shape, 2048)
    eager = train_tiw(budget, ds, x, is_ref, a.device, False)
    compiled = train_tiw(budget, ds, x, is_ref, a.device, True)
    rel = max(abs(c - e) / abs(e) for c, e in zip(compiled, eager))
    result = {"compile": {"eager": {"final_loss": eager[0], "param_norm": eager[1]},
                          "compiled": {"final_loss": compiled[0], "param_norm": compiled[1]},
                          "max_rel_diff": rel, "ok": rel < 1e-3}}
    save(a.out, result)  # each check on disk as it is done: a timeout keeps the ones before it

    paper, _ = resolve_budget(load_suite("ref_size"), "paper", a.dataset)
    pds = dataset_shape(a.dataset)
    torch.manual_seed(0)
    net = make_denoiser(pds, paper.train).to(a.device).eval()
    for p in net.parameters():  # a fresh net is the identity (zero-init outputs): perturb it
        p.data.add_(torch.randn_like(p) * 0.02)
    lat = torch.randn(a.n, *pds.shape, generator=torch.Generator().manual_seed(0)).to(a.device)
    full = edm_sampler(net, lat, paper.sample.steps)
    low = edm_sampler(net, lat, paper.sample.steps, dtype="bfloat16")
    err = float(((low - full).flatten(1).norm(dim=1) / full.flatten(1).norm(dim=1)).median())
    result["sampler_bf16"] = {"median_rel_err": err, "ok": err < 0.05,
                              "note": "random-init net; the metric check is fd/bias on a trained cell"}
    save(a.out, result)
    print(json.dumps(result, indent=2))
    return 0 if all(v["ok"] for v in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
