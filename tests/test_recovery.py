"""End to end on toy2d with the exact ratio: TIW-DSM recovers the unbiased mode weights (METHOD.md §4),
plain DSM on the biased data does not. Compared with the `oracle` ceiling trained on unbiased data."""

import dataclasses
import json
from pathlib import Path

from tiwbench.config import load_suite
from tiwbench.runner import expand, run_cells


def test_tiw_dsm_with_exact_ratio_matches_oracle_bias(tmp_path):
    suite = load_suite("toy_exact")
    cells = expand(suite, "default", methods=["oracle", "tiw_dsm", "dsm_obs"], ref_fracs=[0.05], seeds=[0])
    for c in cells:  # more samples: the bias metric's own sampling noise must stay well below 0.02
        c.budget.sample = dataclasses.replace(c.budget.sample, n=8000)
    summary = run_cells(cells, tmp_path)
    assert not summary["failed"]
    bias = {}
    for p in summary["ok"]:
        r = json.loads(Path(p).read_text())
        bias[r["method"]] = next(m["value"] for m in r["metrics"] if m["name"] == "bias")
    assert abs(bias["tiw_dsm"] - bias["oracle"]) < 0.02, bias
    assert bias["dsm_obs"] - bias["oracle"] > 0.1, bias
