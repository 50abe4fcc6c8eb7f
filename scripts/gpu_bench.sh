#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one run on a CUDA machine, offline:
#   OUT=results/gpu bash scripts/gpu_bench.sh          (make bench-gpu)
# Needs a Python with CUDA torch. Nothing is fetched: the project is installed without build isolation and
# without an index; dependencies it lacks come from the wheels in $WHEELS (default .whl/, filled here by
# `make wheels` and carried with the tree). Without CUDA it says so in one line and exits 2 at once.
#
# Each stage runs under its own time limit ($STAGE_S seconds, default 240) and writes as it goes: the
# bench rewrites its JSON after every row ("complete": false until the end), so a stage cut short keeps
# what it measured. Under $OUT: gpu.csv, bench_gpu.json (eager), bench_gpu_compiled.json (train.compile),
# checks.json (compiled vs eager losses, bf16 vs float32 sampler), stages.tsv (stage, exit status,
# seconds) and the printed tables in bench.txt. Exit status: 0 if every stage passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PY:-python}
WHEELS=${WHEELS:-.whl}
STAGE_S=${STAGE_S:-240}

# 1. A CUDA device, or one line and exit 2 (before anything is installed or written).
why=$(timeout 60 "$PY" -c '
import sys
try:
    import torch
except Exception as e:
    print(f"no torch in {sys.executable} ({type(e).__name__}), so no CUDA GPU can be used"); sys.exit(2)
if not torch.cuda.is_available():
    build = torch.version.cuda or "none (a CPU build)"
    print(f"no CUDA GPU: torch {torch.__version__} (CUDA {build}) sees no GPU device; nothing measured")
    sys.exit(2)
' 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
    echo "gpu_bench: ${why:-the CUDA check failed or timed out (exit $rc)}" | tail -n 1 >&2
    exit 2
fi

# 2. The project, offline: no build isolation (setuptools as installed), no index, no dependency fetch.
mkdir -p "$OUT"
: > "$OUT/bench.txt"
printf 'stage\texit\tseconds\n' > "$OUT/stages.tsv"
offline=(--no-index --find-links "$WHEELS" --no-build-isolation)
if ! "$PY" -c 'import tiwbench.cli' 2>/dev/null; then
    "$PY" -m pip install -q "${offline[@]}" --no-deps -e . >> "$OUT/bench.txt" 2>&1
    "$PY" -c 'import tiwbench.cli' 2>/dev/null || "$PY" -m pip install -q "${offline[@]}" -e . >> "$OUT/bench.txt" 2>&1
    if ! "$PY" -c 'import tiwbench.cli' >> "$OUT/bench.txt" 2>&1; then
        echo "gpu_bench: tiwbench does not import (missing dependencies? put their wheels in $WHEELS); see $OUT/bench.txt" >&2
        exit 1
    fi
fi

# 3. The stages, each bounded.
status=0
stage() {
    local name=$1; shift
    echo "+ [$name] $*" | tee -a "$OUT/bench.txt"
    local t0=$SECONDS
    timeout --kill-after=15 "$STAGE_S" "$@" 2>&1 | tee -a "$OUT/bench.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "[$name] stopped at its ${STAGE_S} s limit; its JSON keeps the rows measured" \
        | tee -a "$OUT/bench.txt"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/stages.tsv"
    [ "$rc" -eq 0 ] || status=1
}
stage gpu timeout 30 nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,memory.total --format=csv \
    -f "$OUT/gpu.csv"
stage bench "$PY" -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper \
    --json "$OUT/bench_gpu.json"
stage bench_compiled "$PY" -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper --compile \
    --json "$OUT/bench_gpu_compiled.json"
stage checks "$PY" scripts/gpu_checks.py --device cuda --out "$OUT/checks.json"
exit $status
