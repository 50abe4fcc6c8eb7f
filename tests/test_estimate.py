"""The note before a paper-profile image run on a CPU: its arithmetic, and when it is said."""

from __future__ import annotations

import pytest

from tiwbench.config import load_suite
from tiwbench.sweep import cost as estimate
from tiwbench.sweep.runner import expand


@pytest.fixture
def fixed_step(monkeypatch):
    """Every timed step takes 0.5 s, so the extrapolation can be checked by hand."""
    monkeypatch.setattr(estimate, "_timed", lambda fn, repeats=2: 0.5)


def test_cell_seconds_extrapolates_the_budget(fixed_step):
    from tiwbench.registry import DATASETS

    cell = expand(load_suite("smoke"), "smoke", ["cifar10_lt"])[0]
    b = cell.budget  # train 20 × 16, sample 100 × (2·3 − 1), ratio 20 × 2·16; 0.5 s per 4 images
    secs = estimate.cell_seconds(DATASETS.get("cifar10_lt")(), b, probe_batch=4)
    assert secs == {"train": 0.125 * 16 * 20, "sample": 0.125 * 100 * 5, "ratio": 0.125 * 32 * 20}


def test_warning_only_for_paper_image_runs_on_a_cpu(fixed_step):
    suite = load_suite("ref_size")
    paper = expand(suite, "paper", ["cifar10_lt"])
    note = estimate.cpu_warning(paper, "cpu")
    # per cell, 200k steps × 512 images at 0.125 s an image is 3,556 h; 24 cells
    assert note and "cifar10_lt ≈" in note and " h " in note and "--device cuda" in note
    hours = float(note.split("cifar10_lt ≈ ")[1].split(" h")[0].replace(",", ""))
    assert hours > len(paper) * 0.125 * 512 * 200_000 / 3600
    assert estimate.cpu_warning(paper, "cuda") is None
    assert estimate.cpu_warning(expand(suite, "smoke", ["cifar10_lt"]), "cpu") is None
    assert estimate.cpu_warning(expand(suite, "paper", ["toy2d"]), "cpu") is None
