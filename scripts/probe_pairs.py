"""Pair a probe's cells (the same suite with one setting changed: scripts/generators_width.yaml, _batch.yaml)
with the suite's own records, per (dataset, ref_frac, seed): a − b, mean [95 % t-interval] over seeds.

    python scripts/probe_pairs.py RUNS PROBE_RUNS [METRIC, default fd]

Each probe method is paired with the same method in RUNS (the setting's effect) and with every other method
in RUNS that has those seeds (e.g. gan_ref at a small batch against the weighted GANs).
"""
import sys

import pandas as pd

from tiwbench.records import load_records
from tiwbench.report.leaderboard import REF_LEVEL_METHOD, records_frame
from tiwbench.report.paired import paired_table


def frame(path, metric):
    df = records_frame(load_records(path))
    # one suite name for both sides: paired_table pairs within a suite, and the probe's is its own
    return df[(df.metric == metric) & (df.method != REF_LEVEL_METHOD)].assign(suite="")


metric = sys.argv[3] if len(sys.argv) > 3 else "fd"
base, probe = frame(sys.argv[1], metric), frame(sys.argv[2], metric)
print(f"| dataset | ref | probe method − suite method | {metric} a − b | n |")
print("|---|---|---|---|---|")
for (ds, frac, pm), g in probe[probe.status == "ok"].groupby(["dataset", "ref_frac", "method"]):
    tag = f"{pm} (probe)"
    mine = base[(base.dataset == ds) & (base.ref_frac == frac)]
    table = paired_table(pd.concat([mine, g.assign(method=tag)], ignore_index=True), vs=tag)
    table = table[table.n >= 2].set_index("method")
    for bm in [m for m in [pm] + sorted(set(table.index) - {pm}) if m in table.index]:
        r = table.loc[bm]
        m, h = -r["diff"], r.paired_half  # paired_table gives method − vs; the probe is a here
        print(f"| {ds} | {frac:g} | {tag} − {bm} | {m:+.3g} [{m - h:+.3g}, {m + h:+.3g}] | {r.n} |")
    print(f"| {ds} | {frac:g} | {tag}, mean | {g.value.mean():.3g} | {len(g)} |")
