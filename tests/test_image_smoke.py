"""`--profile smoke` on real-format CIFAR-10 and FFHQ archives: one cell end to end, evaluator included,
with fd and bias in the record, a sample grid beside it and the grid in the HTML report. (Its time is
measured outside the tests: README, "Checking a set-up".)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_images_data import cifar, faces  # noqa: F401  (fixtures: the small real-format archives)


def _run(tmp_path, *args, method="tiw_dsm"):
    cmd = [sys.executable, "-m", "tiwbench", "run", "--suite", "smoke", "--profile", "smoke", "--methods", method,
           "--ref-fracs", "0.05", "--seeds", "0", "--out", str(tmp_path / "runs"), "--cache-dir",
           str(tmp_path / "cache"), "--no-report", "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ})


def _check(tmp_path, dataset, proc, method="tiw_dsm"):
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell = tmp_path / "runs" / "smoke" / dataset / method / "ref0.05_seed0"
    rec = json.loads((cell / "record.json").read_text())
    values = {m["name"]: m["value"] for m in rec["metrics"]}
    # the suite's metrics and the label reference levels every labelled record carries
    assert set(values) == {"fd", "bias", "bias_ref_level", "bias_ref"}
    assert all(v == v and v >= 0 for v in values.values())
    fd = next(m for m in rec["metrics"] if m["name"] == "fd")
    assert set(fd["variant"]) >= {"backend", "weights", "resize", "reference_size", "reference_hash"}
    assert fd["variant"]["reference_size"] == fd["n_ref"] == min(1000, len_target(dataset))
    assert rec["config"]["evaluator"] == {"epochs": 1, "width": 8, "batch_size": 0, "max_images": 2000}
    assert rec["evaluator"]["classifier"] == "EvalCNN(width=8)"
    assert "evaluator training" in proc.stderr  # the phase the issue found silent
    from PIL import Image

    with Image.open(cell / rec["pictures"]["samples"]) as im:
        assert im.size[0] >= 256 and im.mode == "RGB"
    return rec


@pytest.mark.slow
def test_cifar10_lt_smoke_cell(tmp_path, cifar):  # noqa: F811
    proc = _run(tmp_path, "--dataset", "cifar10_lt", "--data-root", str(cifar[0] / "tar_root"))
    rec = _check(tmp_path, "cifar10_lt", proc)
    assert rec["ref_size"] == 15 and rec["bias_size"] == 300


@pytest.mark.slow
def test_ffhq_gender_smoke_cell(tmp_path, faces):  # noqa: F811
    base, _ = faces
    # dsm_obs here (no discriminator): tiw_dsm's ratio path is covered by the cifar10_lt cell
    proc = _run(tmp_path, "--dataset", "ffhq_gender", "--data-root", str(base / "images.zip"),
                "--data-param", f"labels={base / 'labels.csv'}", method="dsm_obs")
    rec = _check(tmp_path, "ffhq_gender", proc, method="dsm_obs")
    assert rec["bias_size"] == 20
    html = subprocess.run([sys.executable, "-m", "tiwbench", "report", "--runs", str(tmp_path / "runs"),
                           "--format", "html"], capture_output=True, text=True, timeout=300)
    assert html.returncode == 0 and 'alt="samples of dsm_obs"' in html.stdout


def len_target(dataset: str) -> int:
    """The fixtures' target sizes: all 1,500 CIFAR images; 24 + 24 gender-balanced faces."""
    return {"cifar10_lt": 1500, "ffhq_gender": 48}[dataset]
