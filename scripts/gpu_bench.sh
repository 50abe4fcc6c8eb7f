#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one run on a CUDA machine (torch already installed):
#   OUT=results/gpu bash scripts/gpu_bench.sh
# Writes under $OUT: bench_gpu.json (eager), bench_gpu_compiled.json (train.compile), checks.json,
# ratio_precision.json, and the printed tables in bench.txt.
set -euo pipefail
OUT=${OUT:-results/gpu}
PY=${PY:-python}
mkdir -p "$OUT"
$PY -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.csv" || true
{
  $PY -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper --json "$OUT/bench_gpu.json"
  $PY -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper --compile \
      --json "$OUT/bench_gpu_compiled.json"
} 2>&1 | tee "$OUT/bench.txt"
$PY scripts/gpu_checks.py --device cuda --out "$OUT/checks.json" 2>&1 | tee -a "$OUT/bench.txt"
