"""Data-parallel training (torchrun, 2 gloo processes) and submitit sweeps give the records of an
in-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiwbench.config import load_suite
from tiwbench.records import load_records
from tiwbench.sweep.runner import expand, run_cells

# A one-group sweep small enough for seconds: one method without and one with the time-dependent ratio.
TINY = """
name: tiny
datasets: [toy2d]
methods: [dsm_obs, tiw_dsm]
ref_fracs: [0.1]
seeds: [0]
metrics: [fd, bias]
profiles:
  default:
    toy2d:
      train: {steps: 60, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 10, ema_halflife: 10}
      ratio: {steps: 40, batch_size: 32, hidden: 32, depth: 2}
      sample: {n: 101, steps: 6, batch_size: 50}
"""

# float32 training where only the reduction order of the loss differs (two partial sums and an
# all-reduce instead of one sum: ~1 ulp per step). Observed: metrics within 3e-8 relative after 60
# Adam steps. 1e-5 leaves 300x margin and still fails on any real divergence (a wrong batch slice or
# unaveraged gradients move FD by more than 1e-2).
DDP_RTOL = 1e-5


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def inline_records(tiny_suite, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("inline")
    summary = run_cells(expand(load_suite(str(tiny_suite))), out)
    assert len(summary["ok"]) == 2
    return _by_method(out)


def _by_method(out: Path) -> dict[str, dict]:
    return {r["method"]: r for r in load_records(out)}


def _metrics(rec: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for m in rec["metrics"]}


def test_torchrun_two_gloo_processes_match_single_process(tiny_suite, inline_records, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tiwbench",
           "run", "--suite", str(tiny_suite), "--out", str(out), "--no-report", "--launcher", "torchrun"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = _by_method(out)
    assert set(ddp) == set(inline_records)
    for method, rec in ddp.items():
        assert rec["status"] == "ok"
        assert rec["config_hash"] == inline_records[method]["config_hash"]  # resume works across launchers
        ref = _metrics(inline_records[method])
        for name, value in _metrics(rec).items():
            assert value == pytest.approx(ref[name], rel=DDP_RTOL), (method, name)
    # rank 0 alone wrote: one record per cell, no stray temp files
    assert len(list(out.rglob("record.json"))) == 2
    assert not list(out.rglob(".record.json.*"))


def test_shard_and_gather_cover_every_item_once():
    from tiwbench.training import distributed

    # outside a process group: the whole range, unchanged
    assert distributed.shard(7) == slice(0, 7)
    assert distributed.world_size() == 1 and distributed.is_main()


def test_submitit_local_executor_writes_the_inline_records(tiny_suite, inline_records, tmp_path):
    pytest.importorskip("submitit")
    from tiwbench.sweep.executors import submit_sweep

    cells = expand(load_suite(str(tiny_suite)))
    out = tmp_path / "jobs"
    # one cell recorded already (by an in-process run): it must not be submitted again
    first = [c for c in cells if c.method == "dsm_obs"]
    run_cells(first, out)
    before = (out / "tiny/toy2d/dsm_obs/ref0.1_seed0/record.json").read_text()
    # each cell carries its thread count (1 by default), so kernels sum in the same order as in-process
    summary = submit_sweep(cells, out, kind="local", poll_s=0.05)
    assert len(summary["skipped"]) == 1 and len(summary["ok"]) == 1 and not summary["failed"], summary
    assert (out / "tiny/toy2d/dsm_obs/ref0.1_seed0/record.json").read_text() == before
    jobs = _by_method(out)
    for method, rec in jobs.items():
        assert rec["config_hash"] == inline_records[method]["config_hash"]
        assert _metrics(rec) == _metrics(inline_records[method])  # same code path, same numbers
    assert list((out / ".submitit").rglob("*_result.pkl"))  # it really ran as a job
    # a second submission finds everything recorded and submits nothing
    again = submit_sweep(cells, out, kind="local")
    assert len(again["skipped"]) == 2 and not again["ok"]


def test_submitit_job_with_two_tasks_trains_with_ddp(tiny_suite, inline_records, tmp_path):
    # --slurm-gpus 4 gives one task per GPU, joined into one DDP group from the job's environment; the
    # local executor starts its tasks the same way, here two CPU processes over gloo
    pytest.importorskip("submitit")
    from tiwbench.config import SlurmConfig
    from tiwbench.sweep.executors import submit_sweep

    cells = expand(load_suite(str(tiny_suite)))
    out = tmp_path / "ddp_jobs"
    summary = submit_sweep(cells, out, kind="local", slurm=SlurmConfig(tasks_per_job=2), poll_s=0.05)
    assert len(summary["ok"]) == 2 and not summary["failed"], summary
    jobs = _by_method(out)
    for method, rec in jobs.items():
        assert rec["env"]["world_size"] == 2, rec["env"]  # really data-parallel
        ref = _metrics(inline_records[method])
        for name, value in _metrics(rec).items():
            assert value == pytest.approx(ref[name], rel=DDP_RTOL), (method, name)
    assert len(list(out.rglob("record.json"))) == 2


def test_slurm_section_is_strict(tmp_path):
    from tiwbench.config import ConfigError

    p = tmp_path / "s.yaml"
    p.write_text(TINY + "slurm: {partition: gpu, gpus_per_job: 1, time_min: 30}\n")
    s = load_suite(str(p))
    assert (s.slurm.partition, s.slurm.gpus_per_job, s.slurm.time_min) == ("gpu", 1, 30)
    # job resources never enter a cell's config, so records stay valid across executors
    assert expand(s)[0].hash == expand(load_suite(str(p.with_name("s.yaml"))))[0].hash
    p.write_text(TINY + "slurm: {partiton: gpu}\n")
    with pytest.raises(ConfigError, match="did you mean 'partition'"):
        load_suite(str(p))


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from tiwbench.config import SlurmConfig
    from tiwbench.sweep.executors import make_executor

    # no Slurm here: pretend srun exists, then read the sbatch file it would submit
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    cfg = SlurmConfig(partition="gpu", gpus_per_job=2, time_min=90, cpus_per_job=8, mem_gb=32, account="lab")
    ex = make_executor("slurm", tmp_path, cfg, "cuda")
    sbatch = ex._executor._make_submission_file_text("python -m x", "uid")
    # one task per GPU (DDP among them), the job's CPUs shared between its tasks
    for line in ("--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--time=90", "--cpus-per-task=4",
                 "--mem=32GB", "--account=lab"):
        assert f"#SBATCH {line}" in sbatch, line


def test_cli_rejects_bad_launcher_combinations(tmp_path):
    from typer.testing import CliRunner

    from tiwbench.cli import app

    r = CliRunner().invoke(app, ["run", "--suite", "ref_size", "--launcher", "mpi", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "torchrun" in r.output
    r = CliRunner().invoke(app, ["run", "--suite", "ref_size", "--launcher", "torchrun", "--executor", "local",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "inline" in r.output
