"""The metric row of `tiwbench bench` alone (the profile's metrics, FID's Inception included), as JSON:
    python scripts/gpu_metric_row.py --dataset cifar10_lt --profile paper --device cuda --out m.json
"""

from __future__ import annotations

import argparse
import json

import torch

from tiwbench.config import load_suite, profile_metrics, resolve_budget
from tiwbench.records import atomic_write_json
from tiwbench.sweep.step_bench import dataset_shape, known_peak, metric_row

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="cifar10_lt")
ap.add_argument("--profile", default="paper")
ap.add_argument("--device", default="cuda")
ap.add_argument("--out", default=None)
a = ap.parse_args()
suite = load_suite("ref_size")
budget, _ = resolve_budget(suite, a.profile, a.dataset)
cuda = a.device.startswith("cuda")
peak = known_peak(torch.cuda.get_device_name(a.device)) if cuda else None
metrics = profile_metrics(suite, a.profile, a.dataset)
row = metric_row(a.dataset, dataset_shape(a.dataset), budget, metrics, a.device, peak)
row = {**row, "dataset": a.dataset, "profile": a.profile, "samples": budget.sample.n,
       "metric_hours": budget.sample.n / row["images_per_s"] / 3600}
if a.out:
    atomic_write_json(a.out, row)
print(json.dumps(row, indent=1))
