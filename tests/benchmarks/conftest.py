"""Benchmark fixtures, and the summary (step-time ratios to dsm_obs, throughputs) written after
``make bench`` to results/bench_summary.json."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

SUMMARY = Path(__file__).resolve().parents[2] / "results" / "bench_summary.json"


def pytest_benchmark_update_json(config, benchmarks, output_json):
    rows = output_json.get("benchmarks", [])
    steps: dict[str, dict[str, float]] = {}
    throughput: dict[str, dict] = {}
    for b in rows:
        info, mean = b.get("extra_info", {}), b["stats"]["mean"]
        if "method" in info:  # the fastest round: on a shared machine the others' load only adds time
            steps.setdefault(info["network"], {})[info["method"]] = b["stats"]["min"] / info["steps"]
        elif "items" in info:
            throughput[b["name"]] = {"per_s": info["items"] / mean, "unit": info["unit"],
                                     **{k: v for k, v in info.items() if k not in ("items", "unit")}}
    summary = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "step_ms_min": {net: {m: round(t * 1e3, 3) for m, t in ms.items()} for net, ms in steps.items()},
        "step_ratio_to_dsm_obs": {net: {m: round(t / ms["dsm_obs"], 3) for m, t in ms.items()}
                                  for net, ms in steps.items() if "dsm_obs" in ms},
        "throughput": throughput,
    }
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
