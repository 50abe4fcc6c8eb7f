"""Surviving the cluster: a preempted job is requeued and resumes its cell from the checkpoint saved
on the signal; a failing rank ends a torchrun job at once; two sweeps on one folder split the cells."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from polling import wait_for

from tiwbench.config import load_suite
from tiwbench.records import load_records
from tiwbench.sweep.locks import LOCK_NAME
from tiwbench.sweep.runner import expand, run_cells

# One group, two cells. The signal may come before training starts: it is held until the first step ends.
LONG = """
name: long
datasets: [toy2d]
methods: [dsm_obs, tiw_dsm]
ref_fracs: [0.1]
seeds: [0]
metrics: [fd, bias]
profiles:
  default:
    toy2d:
      train: {steps: 200, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 10, ema_halflife: 10}
      ratio: {steps: 40, batch_size: 32, hidden: 32, depth: 2}
      sample: {n: 101, steps: 6, batch_size: 50}
"""


def _suite(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _metrics(rec: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for m in rec["metrics"]}




def test_preempted_job_is_requeued_and_resumes_from_the_signal_checkpoint(tmp_path):
    pytest.importorskip("submitit")
    from tiwbench.sweep.executors import submit_sweep

    cells = expand(load_suite(str(_suite(tmp_path, LONG))))
    inline = tmp_path / "inline"
    run_cells(cells, inline)
    ref = {r["method"]: r for r in load_records(inline)}

    out, folder = tmp_path / "jobs", tmp_path / "submitit"
    result: dict = {}
    sweep = threading.Thread(target=lambda: result.update(
        submit_sweep(cells, out, kind="local", poll_s=0.05, folder=folder, grace_s=60.0)))
    sweep.start()
    # the job's own pid is in the claim of the cell it is running; deliver the preemption signal to it
    lock = out / "long/toy2d/dsm_obs/ref0.1_seed0" / LOCK_NAME
    owner = wait_for(lambda: lock.exists() and lock.read_text() and json.loads(lock.read_text()), 120, "a claim")
    os.kill(owner["pid"], signal.SIGUSR2)
    sweep.join(timeout=240)
    assert not sweep.is_alive()
    assert len(result["ok"]) == 2 and not result["failed"], result

    recs = {r["method"]: r for r in load_records(out)}
    for method, rec in recs.items():
        assert _metrics(rec) == _metrics(ref[method]), method  # bit-identical to the uninterrupted run
    # exactly one cell was interrupted, and it continued from the step where the signal came
    resumed = {m: r["train"]["resumed_from_step"] for m, r in recs.items()}
    assert sorted(v > 0 for v in resumed.values()) == [False, True], resumed
    assert all(r["train"]["resumed_from_step"] == 0 for r in ref.values())

    log = "".join(p.read_text() for p in folder.rglob("*_log.out"))
    assert "requeueing this job" in log and "requeued job, start 2" in log, log[-2000:]
    for method in recs:  # no cell ran to completion twice: one result line per cell over both starts
        finished = re.findall(rf"\] toy2d {method} ref=0.1 seed=0: fd=", log)
        assert len(finished) == 1, (method, log[-3000:])
    assert not list(out.rglob(LOCK_NAME)) and not list(out.rglob("checkpoint-*.pt"))


TINY = LONG.replace("steps: 200, batch_size: 64", "steps: 60, batch_size: 64")


def test_failing_rank_ends_every_rank_promptly_with_its_error_recorded(tmp_path):
    suite, out = _suite(tmp_path, TINY), tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIWBENCH_TEST_FAULT_RANK": "1:train"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tiwbench",
           "run", "--suite", str(suite), "--out", str(out), "--no-report", "--launcher", "torchrun",
           "--methods", "dsm_obs"]
    t0 = time.monotonic()
    # rank 0 waits in DDP's first broadcast for rank 1, which never comes: without the abort this
    # runs into the 30-minute process-group timeout (and the subprocess timeout below)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert "injected fault on rank 1" in proc.stderr, proc.stderr[-3000:]
    (rec,) = load_records(out)
    assert rec["status"] == "failed" and rec["error"]["rank"] == 1, rec.get("error")
    assert rec["error"]["message"] == "injected fault on rank 1 at train"
    assert elapsed < 120, elapsed  # process start and imports dominate; the wait itself is ~0 s


SPLIT = TINY.replace("methods: [dsm_obs, tiw_dsm]", "methods: [dsm_ref, dsm_obs, iw_dsm]").replace(
    "ref_fracs: [0.1]", "ref_fracs: [0.1, 0.2]").replace("seeds: [0]", "seeds: [0, 1]")


def test_two_sweeps_on_one_folder_run_each_cell_once(tmp_path):
    suite, out = _suite(tmp_path, SPLIT), tmp_path / "shared"
    n_cells = len(expand(load_suite(str(suite))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tiwbench", "run", "--suite", str(suite), "--out", str(out), "--no-report",
           "--threads", "1"]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    # the sweep that runs out of cells first waits for those the other one runs: both end complete
    for p, e in zip(procs, errs):
        assert p.returncode == 0 and f"0 of {n_cells} cells missing" in e, e
    ran = [int(re.search(r"(\d+) cells run, (\d+) already recorded", e).group(1)) for e in errs]
    assert sum(ran) == n_cells and min(ran) > 0, (ran, errs)  # split between them, each cell trained once
    others = [int(m.group(1)) if (m := re.search(r"(\d+) recorded by another sweep", e)) else 0 for e in errs]
    seen = [int(re.search(r"(\d+) already recorded", e).group(1)) for e in errs]
    assert [sum(c) for c in zip(ran, seen, others)] == [n_cells] * 2, (ran, seen, others)  # each saw every cell
    recs = load_records(out)  # every record parses: none torn
    assert len(recs) == n_cells and all(r["status"] == "ok" for r in recs)
    assert len({(r["method"], r["ref_frac"], r["seed"]) for r in recs}) == n_cells
    assert not list(out.rglob(LOCK_NAME))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # now all recorded: exit 0
    assert again.returncode == 0 and f"0 cells run, {n_cells} already recorded" in again.stderr, again.stderr


def test_lock_claims_and_stale_recovery(tmp_path):
    from tiwbench.sweep import locks

    path = tmp_path / "c" / LOCK_NAME
    held = locks.claim(path)
    assert held is not None and json.loads(path.read_text())["pid"] == os.getpid()
    assert locks.claim(path) is None  # held by a live process (this one)
    held.release()
    assert not path.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free (reuse within the test is practically impossible)
    me = locks.identity()
    path.write_text(json.dumps({**me, "pid": dead.pid, "started": "1"}))
    taken = locks.claim(path)  # same boot and pid namespace, owner gone: stale, taken over
    assert taken is not None and json.loads(path.read_text())["pid"] == os.getpid()
    taken.release()

    # a live pid that is not the process that wrote the lock (reused): its start time differs
    path.write_text(json.dumps({**me, "pid": os.getpid(), "started": "-1"}))
    assert locks.claim(path) is not None
    path.unlink()

    # another host cannot be asked: live while refreshed, stale after stale_after_s without a heartbeat
    path.write_text(json.dumps({**me, "boot_id": "another-machine", "host": "elsewhere", "pid": 1, "started": "1"}))
    assert locks.claim(path, stale_after_s=60) is None
    old = time.time() - 120
    os.utime(path, (old, old))
    assert locks.claim(path, stale_after_s=60) is not None


def test_heartbeat_refreshes_the_lock(tmp_path):
    from tiwbench.sweep import locks

    path = tmp_path / LOCK_NAME
    held = locks.claim(path, heartbeat_s=0.05)
    old = time.time() - 1000
    os.utime(path, (old, old))
    wait_for(lambda: time.time() - path.stat().st_mtime < 10, 10, "a heartbeat")
    held.release()


def test_held_signal_waits_for_release_or_the_grace_period():
    from tiwbench.training import preemption

    calls: list = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))
    try:
        preemption.hold(signal.SIGUSR1, grace_s=30.0)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert preemption.pending() and not calls  # held: the training loop saves first
        preemption.release()
        assert calls == [signal.SIGUSR1] and not preemption.pending()

        preemption.hold(signal.SIGUSR1, grace_s=0.2)  # outside training nobody releases: the timer does
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: len(calls) == 2, 10, "the grace period to hand the signal on")
        assert not preemption.pending()
    finally:
        signal.signal(signal.SIGUSR1, previous)
