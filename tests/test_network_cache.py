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
    assert len(list((cache / "networks").glob("*.pt"))) == 1
    assert "network_cache" not in cached[("dsm_ref", 0.1)]["train"]  # D_ref's training depends on the size
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
