"""The ratio models of a suite's groups alone, without the score networks: each (ref_frac, seed) group's
fits through the runner's own ``Group.ratio`` (the same seeds and per-σ diagnostics as ``tiwbench run``,
so the numbers are those its records carry), written as one JSON per group; optionally with one kernel
schedule parameter changed, to see what the schedule moves. Then ``--table`` prints the ratio study's
tables of the written files.

    python scripts/ratio_fits.py --suite ratio_study --ref-frac 0.05 --seeds 0,1,2 \\
        --estimators discriminator,discriminator_precond,discriminator_smooth,denoiser_diff --out DIR
    python scripts/ratio_fits.py --suite kernel_study --seeds 0-7 --estimators discriminator~vp,discriminator~subvp \\
        --set vp.beta_max=19.9 --set subvp.beta_max=19.9 --out DIR
    python scripts/ratio_fits.py --table DIR
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

from tiwbench.config import load_suite
from tiwbench.progress import PlainReporter
from tiwbench.sweep.runner import Group, expand


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi) + 1)) if hi else [int(s) for s in text.split(",")]


def fit_groups(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in _seeds(args.seeds):
        cell = expand(load_suite(args.suite), args.profile, ref_fracs=[args.ref_frac], seeds=[seed])[0]
        kernel = copy.deepcopy(cell.budget.kernel)
        for item in args.set:  # KERNEL.PARAM=VALUE
            key, _, value = item.partition("=")
            name, _, param = key.partition(".")
            kernel.setdefault(name, {})[param] = float(value)
        cell.budget = dataclasses.replace(cell.budget, kernel=kernel)
        group = Group(cell, "cpu", None, PlainReporter(1))
        for est in args.estimators.split(","):
            name, _, under = est.partition("~")
            group.ratio("time", name, under or "edm")
        tag = "_".join(s.replace("=", "") for s in args.set)
        record = {"suite": args.suite, "dataset": cell.dataset, "method": "tiw_dsm@ratio_fits",
                  "ref_frac": args.ref_frac, "seed": seed, "status": "ok", "config": cell.config(),
                  "ratio": group.ratio_info}
        name = f"ref{args.ref_frac:g}_seed{seed}{'_' + tag if tag else ''}.json"
        (out / name).write_text(json.dumps(record, indent=1))
        print(f"seed {seed}: {', '.join(args.estimators.split(','))} fitted", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="ratio_study")
    p.add_argument("--profile", default="default")
    p.add_argument("--ref-frac", type=float, default=0.05)
    p.add_argument("--seeds", default="0,1,2", help="0,1,2 or 0-7")
    p.add_argument("--estimators", default="discriminator", help="NAME or NAME~KERNEL, comma-separated")
    p.add_argument("--set", action="append", default=[], help="KERNEL.PARAM=VALUE, e.g. vp.beta_max=19.9")
    p.add_argument("--out")
    p.add_argument("--table", help="print the ratio study's tables of the JSON files in this folder")
    args = p.parse_args()
    if args.table:
        from tiwbench.report.ratio_study import to_markdown

        print(to_markdown([json.loads(f.read_text()) for f in sorted(Path(args.table).glob("*.json"))]))
        return
    if not args.out:
        sys.exit("--out DIR is required to fit (or --table DIR to print)")
    fit_groups(args)


if __name__ == "__main__":
    main()
