"""The FID variant: named in every image record, precomputed by `tiwbench stats`, one cache entry per variant,
and published statistics usable in place of the target's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_images_data import cifar  # noqa: F401  (fixture: a small real-format CIFAR-10 archive)
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.data.base import content_hash
from tiwbench.data.cifar10 import CIFAR10LT
from tiwbench.metrics.base import frechet_distance
from tiwbench.metrics.fidelity import FidelityOptions, precompute_references


def test_stats_precomputes_and_a_changed_variant_is_another_entry(tmp_path, cifar, one_thread):  # noqa: F811
    root = cifar[0] / "tar_root"
    cache = tmp_path / "cache"
    args = ["stats", "--dataset", "cifar10_lt", "--data-root", str(root), "--suite", "smoke", "--profile", "smoke",
            "--cache-dir", str(cache)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    row = json.loads(next(x for x in r.output.splitlines() if x.startswith("{")))
    v = row["variant"]
    assert row["space"] == "evaluator" and row["status"] == "miss"
    assert v["backend"] == "torch-fidelity" and v["resize"] == "identity[-1,1]" and v["reference_size"] == 1000
    # the reference set: the target's seeded subset of fid_ref_samples images, hashed independently here
    target = CIFAR10LT(data_root=str(root), n_bias=300).target_data()[0]
    subset = target[torch.randperm(len(target), generator=torch.Generator().manual_seed(2020))[:1000].sort().values]
    assert v["reference_hash"] == content_hash(subset)
    files = sorted((cache / "reference").glob("*.npz"))
    assert [str(f) for f in files] == [row["path"]]
    again = CliRunner().invoke(app, args)
    assert json.loads(next(x for x in again.output.splitlines() if x.startswith("{")))["status"] == "hit"

    # a changed variant (reference size, backend) is a different cache entry; the old one stays valid
    from tiwbench.config import load_suite
    from tiwbench.sweep.runner import Group, expand

    cell = expand(load_suite("smoke"), "smoke", ["cifar10_lt"])[0]
    cell.dataset_params["data_root"] = str(root)
    group = Group(cell, "cpu", cache, reporter=None)
    assert group.evaluator.loaded_from_cache
    opts = {**FidelityOptions().__dict__, "fid_ref_samples": 500}
    small = precompute_references(group.evaluator, opts, ["fd"], cache)[0]
    assert small["status"] == "miss" and small["variant"]["reference_size"] == 500
    other = precompute_references(group.evaluator, {**opts, "fid_backend": "clean-fid"}, ["fd"], cache)[0]
    assert other["status"] == "miss" and other["variant"]["backend"] == "clean-fid"
    assert len({row["path"], small["path"], other["path"]}) == 3
    assert len(list((cache / "reference").glob("*.npz"))) == 3


def test_published_statistics_replace_the_target(tmp_path):
    from tiwbench.metrics.fidelity import Comparison, Space

    g = torch.Generator().manual_seed(0)
    samples = torch.rand(40, 1, 2, 2, generator=g) * 2 - 1
    mu, sigma = np.full(4, 0.1), np.eye(4) * 0.5
    np.savez(tmp_path / "pub.npz", mu=mu, sigma=sigma)
    space = Space("inception", "tiwbench-evaluator", {"tiwbench_network": _Flat()}, lambda x: x, 4,
                  {"weights": "w", "preprocess": "p"})
    opts = FidelityOptions(fid_ref_stats=str(tmp_path / "pub.npz"))
    c = Comparison(samples, torch.empty(0, 1, 2, 2), space, opts, None)
    f = samples.flatten(1).double().numpy()
    expected = frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, sigma)
    assert c.fd() == pytest.approx(expected, rel=1e-6)
    assert c.info["variant"]["reference"] == "published" and c.info["variant"]["reference_size"] is None
    assert c.info["variant"]["reference_hash"].startswith("file:")


class _Flat(torch.nn.Module):
    def features(self, x):
        return x.flatten(1)
