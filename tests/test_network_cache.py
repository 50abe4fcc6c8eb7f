"""The oracle's trained network is reused across reference sizes through a content-addressed cache: trained
once, the same records as training it every time, and a changed dependency is a miss."""

from __future__ import annotations

import pytest

from tiwbench.config import load_suite
from tiwbench.records import load_records
from tiwbench.sweep.runner import expand, run_cells
from tiwbench.training import network_cache

ORACLE = """
name: oracle_cache
datasets: [toy2d]
methods: [oracle, dsm_ref]
ref_fracs: [0.1, 0.2]
seeds: [0]
metrics: [fd, bias]
profiles:
  default:
    toy2d:
      train: {steps: 40, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 10, ema_halflife: 10,
              select_every: 20, select_n: 64}
      ratio: {steps: 20, batch_size: 32, hidden: 32, depth: 2}
      sample: {n: 101, steps: 6, batch_size: 101}
"""


def _cells(tmp_path, text=ORACLE):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return expand(load_suite(str(p)))


def _by_cell(out):
    return {(r["method"], r["ref_frac"]): r for r in load_records(out)}


@pytest.mark.parametrize("select", [True, False], ids=["selection", "last_step"])
def test_oracle_trains_once_across_reference_sizes_with_the_same_records(tmp_path, one_thread, select):
    cache = tmp_path / "cache"
    no_selection = ORACLE.replace(",\n              select_every: 20, select_n: 64}", "}")
    cells = _cells(tmp_path, ORACLE if select else no_selection)
    run_cells(cells, tmp_path / "cached", cache_dir=cache)
    run_cells(cells, tmp_path / "fresh", cache_dir=None)  # every cell trains its own network
    cached, fresh = _by_cell(tmp_path / "cached"), _by_cell(tmp_path / "fresh")
    hits = sorted(cached[("oracle", f)]["train"]["network_cache"]["hit"] for f in (0.1, 0.2))
    assert hits == [False, True]  # trained at one reference size, reused at the other
    # with selection every network is kept (a rule changes nothing in training), D_ref's once per size
    assert len(list((cache / "networks").glob("*.pt"))) == (3 if select else 1)
    dsm_ref = [cached[("dsm_ref", f)]["train"].get("network_cache") for f in (0.1, 0.2)]
    assert dsm_ref == [None, None] if not select else [c["hit"] for c in dsm_ref] == [False, False]
    for key, rec in fresh.items():
        assert "network_cache" not in rec["train"]
        assert rec["metrics"] == cached[key]["metrics"], key  # bit for bit: the reuse changes no number
        assert rec["train"].get("selection") == cached[key]["train"].get("selection"), key


def test_a_changed_dependency_misses_the_cache(tmp_path, one_thread):
    cache = tmp_path / "cache"
    run_cells(_cells(tmp_path)[:1], tmp_path / "a", cache_dir=cache)  # the oracle at ref 0.1
    longer = _cells(tmp_path, ORACLE.replace("steps: 40,", "steps: 60,"))[:1]
    run_cells(longer, tmp_path / "b", cache_dir=cache)
    (rec,) = load_records(tmp_path / "b")
    assert rec["train"]["network_cache"]["hit"] is False and len(list((cache / "networks").glob("*.pt"))) == 2

    base = {"data": "d", "dataset": "toy2d", "dataset_params": {}, "method": "oracle", "method_options": {},
            "train": {"steps": 40}, "kernel": ["edm", {}], "seed": 0, "threads": 1, "device": "cpu"}
    network_key = network_cache.network_key
    changed = [{"data": "e"}, {"dataset_params": {"n_oracle": 5}}, {"train": {"steps": 41}}, {"seed": 1},
               {"kernel": ["vp", {}]}, {"threads": 2}, {"method_options": {"x": 1}}]
    keys = {network_key(base)} | {network_key({**base, **c}) for c in changed}
    assert len(keys) == 1 + len(changed)
    network_cache.code_digest.cache_clear()
    real = network_cache.code_digest
    try:  # an edit of the training code is another key too
        network_cache.code_digest = lambda: "edited"
        assert network_key(base) not in keys
    finally:
        network_cache.code_digest = real


def test_rules_that_differ_only_in_their_score_share_one_training(tmp_path, one_thread):
    """Cells that differ only in how a snapshot is chosen train once: the second rule takes the first's
    network and snapshots, and its records are bit for bit those of training afresh."""
    from tiwbench.sweep.runner import override_selection

    cache = tmp_path / "cache"
    text = ORACLE.replace("methods: [oracle, dsm_ref]", "methods: [oracle, dsm_ref, tiw_dsm]")
    run_cells(_cells(tmp_path, text), tmp_path / "loss", cache_dir=cache)  # d_ref_holdout by its default score
    fd_rule = override_selection(_cells(tmp_path, text), by="fd")
    run_cells(fd_rule, tmp_path / "fd", cache_dir=cache)
    run_cells(override_selection(_cells(tmp_path, text), by="fd"), tmp_path / "fresh", cache_dir=None)
    shared, fresh = _by_cell(tmp_path / "fd"), _by_cell(tmp_path / "fresh")
    assert all(r["train"]["network_cache"]["hit"] for r in shared.values())  # nothing trained twice
    for key, rec in fresh.items():
        assert rec["train"]["selection"]["by"] == "fd" and rec["train"]["selection"]["source"] == "d_ref_holdout"
        assert rec["metrics"] == shared[key]["metrics"], key
        assert rec["train"]["selection"] == shared[key]["train"]["selection"], key
    # another ratio model is another training: a changed ratio budget misses for tiw_dsm only
    other = override_selection(_cells(tmp_path, text.replace("ratio: {steps: 20,", "ratio: {steps: 21,")), by="fd")
    run_cells(other, tmp_path / "other", cache_dir=cache)
    hits = {k[0]: r["train"]["network_cache"]["hit"] for k, r in _by_cell(tmp_path / "other").items()}
    assert hits == {"oracle": True, "dsm_ref": True, "tiw_dsm": False}
