#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one run on a CUDA machine (torch already installed):
#   OUT=results/gpu bash scripts/gpu_bench.sh
# Writes under $OUT: bench_gpu.json (eager), bench_gpu_compiled.json (train.compile), checks.json
# (compiled vs eager losses, bf16 vs float32 sampler), gpu.csv, and the printed tables in bench.txt.
# Each step runs even if an earlier one failed; the exit status says whether all passed.
set -uo pipefail
OUT=${OUT:-results/gpu}
PY=${PY:-python}
mkdir -p "$OUT"
$PY -m pip install -q --no-deps -e . || exit 1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.csv" 2>&1
status=0
step() { echo "+ $*" | tee -a "$OUT/bench.txt"; "$@" 2>&1 | tee -a "$OUT/bench.txt" || status=1; }
step $PY -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper --json "$OUT/bench_gpu.json"
step $PY -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper --compile \
    --json "$OUT/bench_gpu_compiled.json"
step $PY scripts/gpu_checks.py --device cuda --out "$OUT/checks.json"
exit $status
