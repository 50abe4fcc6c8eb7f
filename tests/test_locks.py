"""Cell claims under the races a shared cluster folder brings: another pid namespace, an owner paused
past its lease, release after a takeover, empty and unreadable lock files, clock skew, and two
breakers at once. Each test fails when the guard it names is removed from tiwbench.sweep.locks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tiwbench.sweep import locks
from tiwbench.sweep.locks import LOCK_NAME


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _foreign(**changes) -> dict:
    return {**locks.identity(), **changes}


def test_owner_in_another_pid_namespace_is_judged_by_its_lease(tmp_path):
    # same host and boot, but its pid means another process here (a container, `unshare --pid`):
    # pid 1 of that namespace is alive there whatever pid 1 is here; only the lease can tell
    path = tmp_path / LOCK_NAME
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps(_foreign(pidns="pid:[1]", pid=dead.pid, started="1")))
    assert locks.claim(path) is None  # freshly renewed: held
    _age(path, locks.STALE_AFTER_S + 60)
    assert locks.claim(path) is not None  # its lease ran out


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_claim_from_a_real_pid_namespace_is_respected(tmp_path):
    path = tmp_path / LOCK_NAME
    code = (f"import time; from tiwbench.sweep import locks; c = locks.claim({str(path)!r}); "
            "print('held' if c else 'none', flush=True); time.sleep(60)")
    try:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                                stdout=subprocess.PIPE, text=True)
    except OSError as e:
        pytest.skip(f"unshare: {e}")
    try:
        line = proc.stdout.readline().strip()
        if line != "held":
            pytest.skip("unshare --pid is not permitted here")
        info = json.loads(path.read_text())
        assert info["pidns"] != locks.pid_namespace()  # it really ran in another namespace
        assert locks.claim(path) is None  # its small pid is meaningless here: the live lease is respected
    finally:
        proc.kill()
        proc.wait()


def test_paused_owner_that_lost_its_lease_does_not_confirm_and_release_keeps_the_new_lock(tmp_path):
    path = tmp_path / LOCK_NAME
    first = locks.claim(path, heartbeat_s=3600)
    # the owner looks foreign to the second sweep (other namespace) and stops renewing (SIGSTOP)
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "pidns": "pid:[1]"}))
    _age(path, locks.STALE_AFTER_S + 60)
    second = locks.claim(path, heartbeat_s=3600)
    assert second is not None
    assert not first.confirm()  # fenced: the first owner may not write its record
    first.release()  # compare-and-delete: the second owner's lock stays
    assert path.exists() and json.loads(path.read_text())["token"] == second.token
    assert second.confirm()
    second.release()
    assert not path.exists()


def test_runner_does_not_write_a_record_after_losing_the_lease(tmp_path, monkeypatch):
    from tiwbench.config import load_suite
    from tiwbench.records import RECORD_NAME
    from tiwbench.sweep import runner

    cells = runner.expand(load_suite("smoke"), "smoke", ["toy2d"], ["dsm_ref"], [0.05], [0])
    out = tmp_path / "runs"

    def stolen(cell, group, device, reporter, checkpoint=None):  # another sweep takes the cell meanwhile
        lock = runner.cell_dir(out, cell.suite, cell.dataset, cell.method, cell.ref_frac, cell.seed) / LOCK_NAME
        lock.unlink()
        lock.write_text(json.dumps(_foreign()))
        return {"metrics": [], "timing": {}, "train": {}, "_picture": None}

    monkeypatch.setattr(runner, "run_cell", stolen)
    lines: list[str] = []
    summary: dict = {}
    sweep = threading.Thread(target=lambda: summary.update(runner.run_cells(
        cells, out, reporter=runner.PlainReporter(1, echo=lines.append, heartbeat=False), poll_s=0.05)))
    sweep.start()
    deadline = time.monotonic() + 60
    while not any(line.startswith("waiting for 1 cell run") for line in lines) and time.monotonic() < deadline:
        time.sleep(0.02)
    cell_path = runner.cell_dir(out, "smoke", "toy2d", "dsm_ref", 0.05, 0) / RECORD_NAME
    assert sweep.is_alive() and not cell_path.exists()  # it wrote nothing, and waits for the new owner
    assert (cell_path.parent / LOCK_NAME).exists()  # the other sweep's lock is left alone
    theirs = {"status": "ok", "config_hash": cells[0].hash, "metrics": [], "timing": {"total": 1.0}}
    cell_path.write_text(json.dumps(theirs))  # the new owner records the cell
    (cell_path.parent / LOCK_NAME).unlink()
    sweep.join(timeout=30)
    assert summary["lost"] == [str(cell_path)] and summary["others"] == [str(cell_path)] and not summary["ok"]
    assert json.loads(cell_path.read_text()) == theirs


def test_empty_lock_file_is_damage_after_a_short_grace(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")
    assert locks.claim(path) is None  # might be mid-write by a foreign implementation: wait a little
    _age(path, locks.WRITE_GRACE_S + 5)
    assert locks.claim(path) is not None  # not 600 s


def test_unreadable_lock_is_respected_and_named(tmp_path, monkeypatch, caplog):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(_foreign()))
    _age(path, locks.STALE_AFTER_S * 10)
    real = Path.read_text

    def denied(self, *a, **k):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    with caplog.at_level(logging.WARNING, logger="tiwbench.locks"):
        assert locks.claim(path) is None
    assert path.exists() and str(path) in caplog.text


def test_lock_age_is_measured_on_the_folder_clock(tmp_path, monkeypatch):
    # this host's clock is an hour ahead of the file server's: a just-renewed lock must not look old
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(_foreign(pidns="pid:[1]")))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert not locks.is_stale(path)


def test_stale_break_is_logged(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(_foreign(pidns="pid:[1]", pid=424242)))
    _age(path, locks.STALE_AFTER_S + 60)
    with caplog.at_level(logging.WARNING, logger="tiwbench.locks"):
        assert locks.claim(path) is not None
    assert "broke the stale claim" in caplog.text and "424242" in caplog.text


def test_break_rechecks_that_the_lock_is_the_one_judged_stale(tmp_path):
    # sweep A judged the old lock stale; before A breaks it, sweep B broke it and claimed the cell.
    # Without the re-check under the guard, A would delete B's live lock and both would train the cell.
    path = tmp_path / LOCK_NAME
    stale = _foreign(pidns="pid:[1]")
    path.write_text(json.dumps(stale))
    _age(path, locks.STALE_AFTER_S + 60)
    assert locks.is_stale(path)
    b = locks.claim(path)  # B breaks and claims
    assert b is not None
    assert not locks._break(path, stale, locks.STALE_AFTER_S)  # A, late
    assert json.loads(path.read_text())["token"] == b.token
    b.release()


def test_break_waits_for_the_guard(tmp_path):
    # another sweep holds the guard while it breaks and re-creates the lock: this one must not break too
    path = tmp_path / LOCK_NAME
    stale = _foreign(pidns="pid:[1]")
    path.write_text(json.dumps(stale))
    _age(path, locks.STALE_AFTER_S + 60)
    with locks._guard(path):
        assert not locks._break(path, stale, locks.STALE_AFTER_S)
        assert locks.claim(path) is None
    assert path.exists()
    assert locks._break(path, stale, locks.STALE_AFTER_S)  # guard free: now it may
