#!/usr/bin/env bash
# One cifar10_lt cell end to end on a device (stage e2e of scripts/gpu_bench.sh): an archive in the real
# format (tests/cifar_format.py, random pixels), then dsm_obs and tiw_dsm through every phase (ratio fit,
# training in bf16 channels-last, bf16 sampling, evaluator, fd and bias, record), then a longer tiw_dsm
# cell killed with SIGTERM after its first checkpoint and run again: its record must say where it resumed.
#   DEVICE=cuda OUT=results/gpu bash scripts/gpu_e2e.sh
# Writes $OUT/e2e.json (the two cells' metrics and timings, the resume step) and $OUT/e2e_records.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}; PY=${PY:-python}; DEVICE=${DEVICE:-cuda}
KILL_AFTER=${KILL_AFTER:-40}; SCALE=${SCALE:-5}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
"$PY" tests/cifar_format.py "$work/cifar" 2000 || exit 1
common=(--suite scripts/gpu_e2e.yaml --profile smoke --data-root "$work/cifar" --data-param n_bias=1000
        --data-param rho=0.1 --out "$work/runs" --cache-dir "$work/cache" --device "$DEVICE" --progress-every 200)
t0=$SECONDS
"$PY" -m tiwbench run "${common[@]}" || exit 1
cell_s=$((SECONDS - t0))
# The kill: SIGTERM once the longer cell's first training checkpoint is on disk (or after $KILL_AFTER s); a
# sweep stops its cells on SIGTERM (exit 143) and the checkpoint stays for the second run to resume.
"$PY" -m tiwbench run "${common[@]}" --methods tiw_dsm --budget-scale "$SCALE" &
pid=$!
for _ in $(seq $((KILL_AFTER * 4))); do
    [ -n "$(find "$work/runs" -name 'checkpoint-*.pt' 2>/dev/null)" ] && { sleep 1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
done
kill -TERM "$pid" 2>/dev/null; wait "$pid"
echo "killed run exit status: $?"
"$PY" -m tiwbench run "${common[@]}" --methods tiw_dsm --budget-scale "$SCALE" || exit 1
tar -czf "$OUT/e2e_records.tar.gz" -C "$work" runs
"$PY" - "$work/runs" "$cell_s" "$OUT/e2e.json" <<'PY'
import json, sys
from pathlib import Path
runs, cell_s, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
cells = []
for p in sorted(runs.rglob("record.json")):
    r = json.loads(p.read_text())
    cells.append({"method": r["method"], "steps": r["train"]["steps"], "status": r["status"],
                  "resumed_from_step": r["train"]["resumed_from_step"], "device": r["env"]["device"],
                  "metrics": {m["name"]: m["value"] for m in r["metrics"]},
                  "train_s": r["train"]["seconds"], "timing": r.get("timing")})
res = {"first_run_s": cell_s, "cells": cells,
       "resumed": any(c["resumed_from_step"] > 0 for c in cells)}
out.write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
sys.exit(0 if res["resumed"] and all(c["status"] == "ok" for c in cells) else 1)
PY
