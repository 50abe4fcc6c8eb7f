"""Trust in the numbers: resume after SIGKILL, failures recorded, bad input, determinism, provenance."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.config import load_suite
from tiwbench.sweep.runner import expand, run_cells

TINY = """name: tiny
datasets: [toy2d]
methods: [dsm_obs, tiw_dsm]
ref_fracs: [0.1, 0.5]
seeds: [0]
profiles:
  default:
    toy2d:
      train: {steps: %(steps)d, hidden: 32, checkpoint_every: 20}
      ratio: {steps: 60, hidden: 32}
      sample: {n: 300, steps: 6}
"""


def tiny_suite(tmp_path, steps=120, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(TINY % {"steps": steps})
    return p


def _metrics(out: Path) -> dict:
    res = {}
    for p in sorted(out.rglob("record.json")):
        r = json.loads(p.read_text())
        res[str(p.relative_to(out))] = (r["status"], r["config_hash"], [(m["name"], m["value"]) for m in r["metrics"]])
    return res


def _run(suite, out, threads=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tiwbench", "run", "--suite", str(suite), "--out", str(out), "--no-report",
           "--threads", str(threads)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_midway_then_resume_matches_uninterrupted(tmp_path):
    suite = tiny_suite(tmp_path, steps=400)
    clean = _run(suite, tmp_path / "clean")
    assert clean.wait(timeout=600) == 0, clean.stdout.read()
    reference = _metrics(tmp_path / "clean")
    assert len(reference) == 4

    out = tmp_path / "killed"
    proc = _run(suite, out)
    deadline = time.time() + 300
    # kill while a cell is mid-training, after at least one cell has finished
    while time.time() < deadline:
        if list(out.rglob("record.json")) and list(out.rglob("checkpoint-*.pt")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("record.json")}
    assert 1 <= len(done_before) < 4
    assert all(json.loads(b)["status"] == "ok" for b in done_before.values())  # never half-written

    again = _run(suite, out)
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log
    assert log.count("done earlier") == len(done_before)  # finished cells are not run twice
    for rel, content in done_before.items():
        assert (out / rel).read_bytes() == content
    assert _metrics(out) == reference
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("checkpoint-*.pt"))


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    suite = load_suite(str(tiny_suite(tmp_path, steps=60)))
    cells = expand(suite, "default", methods=["tiw_dsm"], ref_fracs=[0.1])
    run_cells(cells, tmp_path / "a")
    run_cells(cells, tmp_path / "b")
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert a == b and len(a) == 1


def test_checkpoint_resume_is_bit_identical(tmp_path, toy):
    from tiwbench.config import TrainConfig
    from tiwbench.registry import METHODS
    from tiwbench.training.denoiser import make_denoiser
    from tiwbench.training.loop import train_score

    split = toy.split(0.1, 0)
    x, is_ref = split.observed()
    method = METHODS.get("dsm_obs")()
    cfg = TrainConfig(steps=40, hidden=16, checkpoint_every=15)

    def fresh():
        torch.manual_seed(0)
        return make_denoiser(toy, cfg), torch.Generator().manual_seed(1)

    net, g = fresh()
    full, _ = train_score(method, net, x, is_ref, None, cfg, g)
    ck = tmp_path / "ck.pt"
    net, g = fresh()

    class Stop(Exception):
        pass

    def progress(done, total):
        if done == 31:
            raise Stop

    with pytest.raises(Stop):
        train_score(method, net, x, is_ref, None, cfg, g, progress=progress, checkpoint=ck)  # killed at step 31
    assert torch.load(ck, weights_only=True)["step"] == 30
    net, g = fresh()
    resumed, _ = train_score(method, net, x, is_ref, None, cfg, g, checkpoint=ck)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_is_a_failed_record_and_the_sweep_goes_on(tmp_path):
    suite = tmp_path / "nan.yaml"
    suite.write_text(TINY.replace("hidden: 32, checkpoint_every: 20", "hidden: 32, lr: 1.0e+30, grad_clip: 0.0")
                     % {"steps": 40})
    r = CliRunner().invoke(app, ["run", "--suite", str(suite), "--out", str(tmp_path / "o"), "--methods", "dsm_obs",
                                 "--ref-fracs", "0.1"])
    recs = [json.loads(p.read_text()) for p in (tmp_path / "o").rglob("record.json")]
    assert r.exit_code == 1
    assert len(recs) == 1 and recs[0]["status"] == "failed"
    assert recs[0]["error"]["type"] == "NonFiniteLoss" and recs[0]["error"]["step"] >= 0
    assert "failed" in r.output


def test_one_broken_cell_does_not_stop_the_sweep(tmp_path, monkeypatch):
    import tiwbench.sweep.runner as runner

    suite = load_suite(str(tiny_suite(tmp_path, steps=30)))
    cells = expand(suite, "default", ref_fracs=[0.1])
    real = runner.run_cell

    def flaky(cell, *a, **k):
        if cell.method == "dsm_obs":
            raise RuntimeError("boom")
        return real(cell, *a, **k)

    monkeypatch.setattr(runner, "run_cell", flaky)
    summary = run_cells(cells, tmp_path / "o")
    assert len(summary["failed"]) == 1 and len(summary["ok"]) == 1
    rec = json.loads(Path(summary["failed"][0]).read_text())
    assert rec["status"] == "failed" and rec["error"]["message"] == "boom"
    from tiwbench.report.render import report

    assert "failed" in report(tmp_path / "o", "markdown")


def test_time_limit_is_a_failed_record(tmp_path):
    suite = tmp_path / "slow.yaml"
    suite.write_text(TINY.replace("checkpoint_every: 20", "time_limit: 1.0e-6, check_every: 5") % {"steps": 50})
    cells = expand(load_suite(str(suite)), "default", methods=["dsm_obs"], ref_fracs=[0.1])
    summary = run_cells(cells, tmp_path / "o")
    rec = json.loads(Path(summary["failed"][0]).read_text())
    assert rec["error"]["type"] == "CellTimeout" and rec["error"]["step"] == 5


def test_changed_config_reruns_the_cell(tmp_path):
    suite = load_suite(str(tiny_suite(tmp_path, steps=30)))
    cells = expand(suite, "default", methods=["dsm_obs"], ref_fracs=[0.1])
    assert len(run_cells(cells, tmp_path / "o")["ok"]) == 1
    assert len(run_cells(cells, tmp_path / "o")["skipped"]) == 1
    cells[0].budget.train.steps = 31
    assert len(run_cells(cells, tmp_path / "o")["ok"]) == 1


def test_record_provenance(tmp_path):
    suite = load_suite(str(tiny_suite(tmp_path, steps=30)))
    cells = expand(suite, "default", methods=["tiw_dsm"], ref_fracs=[0.1])
    summary = run_cells(cells, tmp_path / "o")
    rec = json.loads(Path(summary["ok"][0]).read_text())
    env = rec["env"]
    for key in ("git_sha", "git_dirty", "packages", "device", "threads", "python"):
        assert key in env
    assert set(rec["data_hashes"]) == {"bias", "ref", "oracle"}
    assert len(rec["ratio"]["time"]["checkpoint_hash"]) == 16
    assert "accuracy" in rec["evaluator"]
    for phase in ("ratio", "train", "sample", "metrics", "total"):
        assert rec["timing"][phase] >= 0
    assert len(rec["ratio"]["time"]["per_sigma"]) == 5


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    from tiwbench.sweep.runner import checkpoint_path

    suite = load_suite(str(tiny_suite(tmp_path, steps=30)))
    cells = expand(suite, "default", methods=["dsm_obs"], ref_fracs=[0.1])
    a = checkpoint_path(tmp_path, cells[0])
    cells[0].budget.train.lr = 1e-4
    assert checkpoint_path(tmp_path, cells[0]) != a


def test_report_flags_seeds_of_different_configs(tmp_path):
    suite = load_suite(str(tiny_suite(tmp_path, steps=20)))
    first = expand(suite, "default", methods=["dsm_obs"], ref_fracs=[0.1], seeds=[0, 1])
    run_cells(first, tmp_path / "o")
    changed = expand(suite, "default", methods=["dsm_obs"], ref_fracs=[0.1], seeds=[0])
    changed[0].budget.train.lr = 1e-3  # seed 0 re-run with another config; seed 1 is stale
    run_cells(changed, tmp_path / "o")
    from tiwbench.report.render import report

    assert "MIXED: 2 configs" in report(tmp_path / "o", "markdown")


SAMPLING_HEAVY = """name: heavy
datasets: [toy2d]
methods: [tiw_dsm]
ref_fracs: [0.1]
seeds: [0]
profiles:
  default:
    toy2d:
      train: {steps: 150, hidden: 32, checkpoint_every: 50}
      ratio: {steps: 60, hidden: 32}
      sample: {n: 40000, steps: 6, batch_size: 2000}
"""


def test_kill_in_sampling_resumes_without_retraining(tmp_path):
    suite = tmp_path / "heavy.yaml"
    suite.write_text(SAMPLING_HEAVY)
    clean = _run(suite, tmp_path / "clean")
    assert clean.wait(timeout=600) == 0, clean.stdout.read()

    out = tmp_path / "killed"
    proc = _run(suite, out)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.rglob("network-*.pt")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # training is over, sampling has begun: the network is on disk
    proc.wait()
    assert list(out.rglob("network-*.pt")), "the finished network was not saved before sampling"
    assert not list(out.rglob("record.json"))  # killed before the record

    again = _run(suite, out)
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log
    assert " · train " not in log and " · ratio " not in log, log  # neither the network nor the ratio retrained
    (rec,) = [json.loads(p.read_text()) for p in out.rglob("record.json")]
    assert rec["train"]["restored_network"] is True and "time" in rec["ratio"]
    assert _metrics(out) == _metrics(tmp_path / "clean")  # the same numbers as a run never interrupted
    assert not list(out.rglob("network-*.pt")) and not list(out.rglob("checkpoint-*.pt"))
