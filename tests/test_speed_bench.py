"""`tiwbench bench`: its JSON rows, and its FLOP counts against a count by hand."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.config import load_suite
from tiwbench.sweep.step_bench import known_peak

# the bench times the metrics of the suite it reads (ref_size)
METRIC_ROW = f"metrics ({', '.join(load_suite('ref_size').metrics)})"
KEYS = {"method", "ms_per_step", "ratio_to_dsm_obs", "flops_per_step", "tflops", "share_of_peak"}


def linear_flops(widths, batch):
    """2·in·out multiply-adds per Linear and sample."""
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:])) * batch


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--dataset", "toy2d", "--device", "cpu", "--profile", "smoke",
                                   "--steps", "3", "--repeats", "1", "--peak-tflops", "2.5", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "tiw_dsm" in res.output and "sampler" in res.output
    data = json.loads(out.read_text())
    assert data["complete"] is True
    return data


def test_rows_hold_the_columns(toy_bench):
    rows = {r["method"]: r for r in toy_bench["rows"]}
    assert set(rows) == {"dsm_obs", "dsm_ref", "iw_dsm", "tiw_dsm_nocorr", "tiw_dsm", "oracle", "sampler (float32)",
                         METRIC_ROW}
    metrics = rows.pop(METRIC_ROW)  # toy2d's metrics run on raw coordinates: no network, 0 FLOPs
    assert KEYS <= set(metrics) and metrics["flops_per_step"] == 0 and metrics["images_per_s"] > 0
    for r in rows.values():
        assert KEYS <= set(r) and r["ms_per_step"] > 0 and r["flops_per_step"] > 0
        assert r["tflops"] == pytest.approx(r["flops_per_step"] / (r["ms_per_step"] * 1e-3) / 1e12)
        assert r["share_of_peak"] == pytest.approx(r["tflops"] / 2.5)
    assert rows["dsm_obs"]["ratio_to_dsm_obs"] == 1.0
    for m in ("tiw_dsm", "iw_dsm"):
        assert rows[m]["ratio_to_dsm_obs"] == pytest.approx(rows[m]["ms_per_step"] / rows["dsm_obs"]["ms_per_step"])
    assert rows["sampler (float32)"]["images_per_s"] > 0 and rows["sampler (float32)"]["ratio_to_dsm_obs"] is None


def test_cell_hours_are_the_four_parts(toy_bench):
    """toy2d smoke: 300 score steps, 300 ratio steps, 1000 samples; each part from its own timing."""
    rows = {r["method"]: r for r in toy_bench["rows"]}
    sample_s = 1000 / rows["sampler (float32)"]["images_per_s"]
    metric_s = 1000 / rows[METRIC_ROW]["images_per_s"]
    for m in ("dsm_obs", "dsm_ref", "iw_dsm", "tiw_dsm_nocorr", "tiw_dsm", "oracle"):
        r = rows[m]
        assert r["train_hours"] == pytest.approx(300 * r["ms_per_step"] / 3.6e6)
        ratio_ms = r["ratio_ms_per_step"] or 0.0
        assert r["ratio_hours"] == pytest.approx(300 * ratio_ms / 3.6e6)
        assert r["sample_hours"] == pytest.approx(sample_s / 3600)
        assert r["metric_hours"] == pytest.approx(metric_s / 3600)
        parts = r["train_hours"] + r["ratio_hours"] + r["sample_hours"] + r["metric_hours"]
        assert r["cell_hours"] == pytest.approx(parts) and r["cell_hours"] > r["train_hours"]
    # one time-dependent ratio model shared by the TIW methods; IW-DSM trains its own clean classifier
    assert rows["tiw_dsm"]["ratio_ms_per_step"] == rows["tiw_dsm_nocorr"]["ratio_ms_per_step"] > 0
    assert rows["iw_dsm"]["ratio_ms_per_step"] > 0 and rows["dsm_obs"]["ratio_hours"] == 0


def test_flops_match_a_count_by_hand(toy_bench):
    """toy2d smoke: score MLP 3×128 on x (2) with a map of the embedding (32 -> 128) added to each
    hidden layer; ratio MLP the same with one output; batch 256, sampler batch 2000."""
    rows = {r["method"]: r for r in toy_bench["rows"]}
    b = 256

    def mlp(out, inp=2):
        trunk = linear_flops([inp, 128, 128, 128, out], b)
        first = linear_flops([inp, 128], b)
        time = 3 * linear_flops([32, 128], b)
        return trunk + time, first, time

    fwd, first, time = mlp(2)
    # backward: every weight gradient (= forward), every input gradient but those of the layers fed
    # by x and by the embedding (neither needs a gradient)
    dsm = fwd + fwd + (fwd - first - time)
    for m in ("dsm_obs", "dsm_ref", "oracle"):
        assert rows[m]["flops_per_step"] == dsm
    disc_t, _, disc_time = mlp(1)  # time-dependent discriminator, whole batch
    disc_clean = linear_flops([2, 128, 128, 128, 1], b)  # IW-DSM's clean classifier
    assert rows["tiw_dsm_nocorr"]["flops_per_step"] == dsm + disc_t
    # forward + input gradient down to x (the embedding's maps need none)
    assert rows["tiw_dsm"]["flops_per_step"] == dsm + disc_t + (disc_t - disc_time)
    assert rows["iw_dsm"]["flops_per_step"] == dsm + disc_clean
    assert rows["tiw_dsm"]["ratio_flops_per_step"] == disc_t + (disc_t - disc_time)
    assert rows["sampler (float32)"]["flops_per_step"] == fwd * 2000 // b


def test_no_peak_is_null_and_known_gpus_have_one(tmp_path):
    assert known_peak("NVIDIA H200") == 989.0 and known_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert known_peak("NVIDIA A100-SXM4-80GB") == 312.0 and known_peak("cpu") is None
    res = CliRunner().invoke(app, ["bench", "--dataset", "toy2d", "--steps", "1", "--methods", "dsm_obs",
                                   "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert all(r["share_of_peak"] is None for r in data["rows"])


def test_bad_bench_input_is_one_line():
    res = CliRunner().invoke(app, ["bench", "--dataset", "toy2d", "--peak-tflops", "-1"])
    assert res.exit_code == 2 and "--peak-tflops" in res.output


def test_rows_reach_the_caller_one_by_one():
    """A bench cut short (a stage's timeout) keeps the rows measured so far: each is handed over as it comes."""
    from tiwbench.sweep.step_bench import run_bench

    seen = []
    res = run_bench("toy2d", methods=("dsm_obs", "tiw_dsm"), steps=1, warmup=1, repeats=1,
                    on_row=lambda r: seen.append((len(r["rows"]), r["complete"])))
    assert seen == [(i, False) for i in range(1, 5)] and res["complete"] and len(res["rows"]) == 4
    assert [r["method"] for r in res["rows"]] == ["sampler (float32)", METRIC_ROW, "dsm_obs", "tiw_dsm"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_bench_without_cuda_is_one_line_and_exit_2(tmp_path):
    root = Path(__file__).resolve().parent.parent
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(root / "scripts" / "gpu_bench.sh")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "gpu")})
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "no CUDA GPU" in lines[0], res
    assert time.monotonic() - t0 < 60 and not (tmp_path / "gpu").exists()  # nothing installed or written


def test_bench_driven_from_python_is_the_command_without_its_parsing(tmp_path):
    from tiwbench.config import ConfigError
    from tiwbench.registry import RegistryError
    from tiwbench.sweep.step_bench import BenchRequest, run_request

    with pytest.raises(ConfigError, match="--peak-tflops"):
        run_request(BenchRequest(peak_tflops=-1))
    with pytest.raises(RegistryError):
        run_request(BenchRequest(methods=("dsm_ob",)))
    res = run_request(BenchRequest(steps=1, methods=("dsm_obs",), repeats=1))
    assert res["dataset"] == "toy2d" and [r["method"] for r in res["rows"] if r["method"] == "dsm_obs"] == ["dsm_obs"]


def test_paper_metric_row_times_fid_inception_at_its_published_cost():
    """A paper cell's metrics are its profile's (fd, bias, fid), not the suite's: the projection pays FID's
    Inception pass. torchvision's model table gives Inception-v3 5.71 G multiply-adds an image at 299×299,
    i.e. 11.42 GFLOP; the row counts that (and the evaluator's passes) per sample."""
    from tiwbench.config import profile_metrics, resolve_budget
    from tiwbench.sweep.step_bench import dataset_shape, metric_row

    suite = load_suite("ref_size")
    budget, _ = resolve_budget(suite, "paper", "cifar10_lt")
    metrics = profile_metrics(suite, "paper", "cifar10_lt")
    assert "fid" in metrics
    ds = dataset_shape("cifar10_lt")
    fid_only = metric_row("cifar10_lt", ds, budget, ["fid"], "cpu", None, batch=2)
    assert fid_only["flops_per_step"] / 2 == pytest.approx(11.42e9, rel=0.005)
    row = metric_row("cifar10_lt", ds, budget, metrics, "cpu", None, batch=2)
    assert row["method"] == "metrics (fd, bias, fid)"
    assert row["flops_per_step"] > fid_only["flops_per_step"]
