#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one run on a CUDA machine, offline:
#   OUT=results/gpu bash scripts/gpu_bench.sh          (make bench-gpu)
# Needs a Python with CUDA torch. Nothing is fetched: the project is installed without build isolation and
# without an index; dependencies it lacks come from the wheels in $WHEELS (default .whl/, filled here by
# `make wheels` and carried with the tree). Without CUDA it says so in one line and exits 2 at once.
#
# Each stage runs under its own time limit (seconds: BENCH_S 170, E2E_S 130, CHECKS_S 110, COMPILED_S 150;
# the four fit a 10-minute device call with its set-up) and writes as it goes: the
# bench rewrites its JSON after every row ("complete": false until the end), so a stage cut short keeps
# what it measured. Under $OUT: gpu.csv, bench_gpu.json (eager), bench_gpu_compiled.json (train.compile),
# checks.json (compiled vs eager losses, bf16 vs float32 sampler), e2e.json and e2e_records.tar.gz (a
# cifar10_lt cell through every phase on the device, killed and resumed: scripts/gpu_e2e.sh), stages.tsv
# (stage, exit status, seconds) and the printed tables in bench.txt. The compiled bench times
# $COMPILED_METHODS only (default dsm_obs,tiw_dsm): each method is a separate compilation of the paper U-Net. Exit status: 0 if every stage passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PY:-python}
WHEELS=${WHEELS:-.whl}
BENCH_S=${BENCH_S:-170}; E2E_S=${E2E_S:-130}; CHECKS_S=${CHECKS_S:-110}; COMPILED_S=${COMPILED_S:-150}
COMPILED_METHODS=${COMPILED_METHODS:-dsm_obs,tiw_dsm}

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
    local name=$1 limit=$2; shift 2
    echo "+ [$name] $*" | tee -a "$OUT/bench.txt"
    local t0=$SECONDS
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/bench.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "[$name] stopped at its ${limit} s limit; its JSON keeps the rows measured" \
        | tee -a "$OUT/bench.txt"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/stages.tsv"
    [ "$rc" -eq 0 ] || status=1
}
stage gpu 30 nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,memory.total,driver_version --format=csv \
    -f "$OUT/gpu.csv"
stage bench "$BENCH_S" "$PY" -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper \
    --json "$OUT/bench_gpu.json"
stage e2e "$E2E_S" env OUT="$OUT" PY="$PY" DEVICE=cuda bash scripts/gpu_e2e.sh
stage checks "$CHECKS_S" "$PY" scripts/gpu_checks.py --device cuda --out "$OUT/checks.json"
stage bench_compiled "$COMPILED_S" "$PY" -m tiwbench bench --dataset cifar10_lt --device cuda --profile paper \
    --compile --methods "$COMPILED_METHODS" --json "$OUT/bench_gpu_compiled.json"
exit $status
