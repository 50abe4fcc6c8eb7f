"""The paired differences docs/generators.md reads (per seed, 95 % t-interval), and the GAN runs whose
generator collapsed (train.collapsed), from the records of `tiwbench run --suite generators`.

    python scripts/generators_pairs.py RUNS_DIR [SEEDS, e.g. 0,1,2,3]
"""
import json
import sys
from pathlib import Path

import pandas as pd

from tiwbench.records import load_records
from tiwbench.report.leaderboard import records_frame
from tiwbench.report.paired import paired_interval

PAIRS = [("tiw_gan", "iw_gan_noise"), ("tiw_gan@exact_empirical", "iw_gan_noise@exact_empirical"),
         ("tiw_gan@fitted_family", "iw_gan_noise@fitted_family"),
         ("tiw_gan", "gan_ref"), ("tiw_gan@exact_empirical", "gan_ref"), ("tiw_gan@fitted_family", "gan_ref"),
         ("iw_gan_noise", "gan_ref"), ("iw_gan", "gan_ref"), ("gan_noise_obs", "gan_ref"), ("iw_gan", "iw_gan_noise"),
         ("iw_gan@exact_empirical", "iw_gan_noise@exact_empirical"), ("iw_gan@exact_empirical", "gan_ref"),
         ("tiw_dsm", "dsm_ref"), ("tiw_dsm@exact_empirical", "dsm_ref"), ("tiw_dsm@fitted_family", "dsm_ref"),
         ("gan_ref", "dsm_ref"), ("tiw_gan", "tiw_dsm"), ("tiw_gan@exact_empirical", "tiw_dsm@exact_empirical"),
         ("tiw_gan@fitted_family", "tiw_dsm@fitted_family"),
         ("iw_vae", "vae_ref"), ("iw_vae@exact_empirical", "vae_ref"), ("vae_ref", "dsm_ref")]
df = records_frame(load_records(sys.argv[1]))
ok = df[df.status == "ok"]
if len(sys.argv) > 2:  # only these seeds (e.g. those every method finished)
    ok = ok[ok.seed.isin([int(x) for x in sys.argv[2].split(",")])]
# gmm_tilt changes D_bias only: a reference-only cell is the same computation as on gmm (fd, bias and memorized
# bit-identical wherever both were run); where the tilt lacks one, gmm's stands in (said below). The reference
# levels are not borrowed: fd_ref_level draws its own samples of the target per dataset.
REF_ONLY = ["dsm_ref", "gan_ref", "vae_ref"]
tilt, base = ok[ok.dataset == "gmm_tilt"], ok[ok.dataset == "gmm"]
borrowed = []
for frac in sorted(set(tilt.ref_frac)):
    for method in REF_ONLY:
        have = set(tilt[(tilt.ref_frac == frac) & (tilt.method == method)].seed)
        rows = base[(base.ref_frac == frac) & (base.method == method) & ~base.seed.isin(have)]
        if len(rows):
            borrowed.append(f"{method} at {frac:g} ({rows.seed.nunique()} seeds)")
        ok = pd.concat([ok, rows.assign(dataset="gmm_tilt")], ignore_index=True)
if borrowed:
    print("gmm_tilt rows taken from gmm's records (reference-only, the same computation): " + ", ".join(borrowed))
ORDER = ["oracle", "dsm_ref", "tiw_dsm", "tiw_dsm@exact_empirical", "tiw_dsm@fitted_family", "gan_ref", "gan_obs",
         "iw_gan", "iw_gan@exact_empirical", "gan_noise_obs", "iw_gan_noise", "iw_gan_noise@exact_empirical",
         "iw_gan_noise@fitted_family",
         "tiw_gan", "tiw_gan@exact_empirical", "tiw_gan@fitted_family", "vae_ref", "vae_obs", "iw_vae",
         "iw_vae@exact_empirical"]
for (ds, frac), g in ok.groupby(["dataset", "ref_frac"]):
    print(f"\n#### {ds}, ref_frac {frac:g}: mean [95 % t-interval] over seeds (n)\n")
    print("| method | fd ↓ | bias ↓ | memorized ↓ |")
    print("|---|---|---|---|")
    levels = g[g.method == "(reference level)"].groupby("metric").value.mean()  # fd_ref_level and bias_ref_level
    for method in [m for m in ORDER if m in set(g.method)]:
        cells = []
        for metric in ("fd", "bias", "memorized"):
            v = list(g[(g.method == method) & (g.metric == metric)].value)
            m, h = paired_interval(v)
            cells.append(f"{m:.4g} [{m - h:.3g}, {m + h:.3g}] ({len(v)})" if h == h else f"{m:.4g} ({len(v)})")
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"| (reference level) | {levels.get('fd', float('nan')):.3g} | {levels.get('bias', float('nan')):.3g} | |")
for metric in ("fd", "bias", "memorized"):
    print(f"\n#### {metric}: per-seed difference a − b, mean [95 % t-interval] (n seeds)\n")
    print("| dataset | ref | a − b | diff | n |")
    print("|---|---|---|---|---|")
    for (ds, frac), g in ok[ok.metric == metric].groupby(["dataset", "ref_frac"]):
        for a, b in PAIRS:
            va, vb = g[g.method == a].set_index("seed").value, g[g.method == b].set_index("seed").value
            seeds = sorted(set(va.index) & set(vb.index))
            if not seeds:
                continue
            d = [float(va[s] - vb[s]) for s in seeds]
            m, h = paired_interval(d)
            ci = f"[{m - h:+.4g}, {m + h:+.4g}]" if h == h else "no CI"
            print(f"| {ds} | {frac:g} | {a} − {b} | {m:+.4g} {ci} | {len(seeds)} |")

collapsed = {}
for p in Path(sys.argv[1]).rglob("record.json"):
    r = json.loads(p.read_text())
    if r.get("status") == "ok" and "collapsed" in r.get("train", {}):
        n, c = collapsed.get(r["method"], (0, 0))
        collapsed[r["method"]] = (n + 1, c + int(r["train"]["collapsed"]))
counts = ", ".join(f"{m} {c}/{n}" for m, (n, c) in sorted(collapsed.items()))
print(f"\ncollapsed generators (of finished GAN cells): {counts}")
