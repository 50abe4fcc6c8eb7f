"""Pair a probe's cells (the same suite with one setting changed: scripts/generators_width.yaml, _batch.yaml)
with the suite's own records, per (dataset, ref_frac, seed): a − b, mean [95 % t-interval] over seeds.

    python scripts/probe_pairs.py RUNS PROBE_RUNS [METRIC, default fd]

Each probe method is paired with the same method in RUNS (the setting's effect) and with every other method
in RUNS that has those seeds (e.g. gan_ref at a small batch against the weighted GANs).
"""
import sys

from tiwbench.records import load_records
from tiwbench.report.leaderboard import records_frame
from tiwbench.report.paired import paired_interval


def frame(path, metric):
    df = records_frame(load_records(path))
    return df[(df.status == "ok") & (df.metric == metric)]


metric = sys.argv[3] if len(sys.argv) > 3 else "fd"
base, probe = frame(sys.argv[1], metric), frame(sys.argv[2], metric)
print(f"| dataset | ref | probe method − suite method | {metric} a − b | n |")
print("|---|---|---|---|---|")
for (ds, frac, pm), g in probe.groupby(["dataset", "ref_frac", "method"]):
    if pm == "(reference level)":
        continue
    a = g.set_index("seed").value
    mine = base[(base.dataset == ds) & (base.ref_frac == frac)]
    for bm in [pm] + sorted(set(mine.method) - {pm, "(reference level)"}):
        b = mine[mine.method == bm].set_index("seed").value
        seeds = sorted(set(a.index) & set(b.index))
        if len(seeds) < 2:
            continue
        m, h = paired_interval([float(a[s] - b[s]) for s in seeds])
        print(f"| {ds} | {frac:g} | {pm} (probe) − {bm} | {m:+.3g} [{m - h:+.3g}, {m + h:+.3g}] | {len(seeds)} |")
    print(f"| {ds} | {frac:g} | {pm} (probe), mean | {a.mean():.3g} | {len(a)} |")
