"""The budget-doubling check: --budget-scale doubles every cell's steps once, and the comparison flags moved
means and changed winners."""

from __future__ import annotations

from tiwbench.config import load_suite
from tiwbench.report.budget_check import budget_check, to_markdown
from tiwbench.report.leaderboard import aggregate, records_frame
from tiwbench.sweep.runner import expand, scale_budget


def test_scale_budget_doubles_each_cell_once():
    base = expand(load_suite("ref_size"), "default", ["gmm"])
    scaled = scale_budget(expand(load_suite("ref_size"), "default", ["gmm"]), 2)
    for a, b in zip(base, scaled, strict=True):
        assert b.budget.train.steps == 2 * a.budget.train.steps and b.budget.ratio.steps == 2 * a.budget.ratio.steps
        assert b.suite == "ref_size_x2" and b.hash != a.hash


def _rec(suite, method, seed, fd):
    return {"suite": suite, "dataset": "gmm", "method": method, "ref_frac": 0.05, "seed": seed, "status": "ok",
            "config": {"m": method}, "metrics": [{"name": "fd", "value": fd, "higher_is_better": False}]}


def test_moved_means_and_changed_winners_are_flagged():
    recs = []
    for s in range(3):
        j = 0.01 * (s - 1)
        recs += [_rec("r", "a", s, 1.0 + j), _rec("r", "b", s, 2.0 + j),  # a wins at 1×
                 _rec("r_x2", "a", s, 1.005 + j), _rec("r_x2", "b", s, 0.5 + j)]  # b wins at 2×, b moved
    per_method, cols = budget_check(aggregate(records_frame(recs)), "r")
    moved = dict(zip(per_method.method, per_method.moved, strict=True))
    assert moved == {"a": False, "b": True}
    assert cols.changed.tolist() == [True]
    assert "1 of 2 means moved" in to_markdown(aggregate(records_frame(recs)), "r")
