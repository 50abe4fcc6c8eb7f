"""A sweep ends when every cell of its suite is recorded or has failed, whoever ran it: it waits for the
cells another live sweep holds, counts what that sweep records, and takes over a claim whose owner died.
The exit codes of `tiwbench run`: 0 complete, 1 failed or missing cells, 2 bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from polling import wait_for
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.config import load_suite
from tiwbench.progress import PlainReporter
from tiwbench.records import RECORD_NAME, cell_dir
from tiwbench.sweep import locks
from tiwbench.sweep.locks import LOCK_NAME
from tiwbench.sweep.runner import expand, run_cells

PAIR = """
name: pair
datasets: [toy2d]
methods: [dsm_obs, dsm_ref]
ref_fracs: [0.1]
seeds: [0]
metrics: [fd]
profiles:
  default:
    toy2d:
      train: {steps: 30, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 10, ema_halflife: 10}
      ratio: {steps: 20, batch_size: 32, hidden: 32, depth: 2}
      sample: {n: 101, steps: 6, batch_size: 101}
"""


def _cells(tmp_path: Path):
    p = tmp_path / "pair.yaml"
    p.write_text(PAIR)
    return expand(load_suite(str(p)))


def _path(out: Path, cell) -> Path:
    return cell_dir(out, cell.suite, cell.dataset, cell.method, cell.ref_frac, cell.seed) / RECORD_NAME


def _sweep_in_thread(cells, out: Path):
    lines: list[str] = []
    result: dict = {}
    reporter = PlainReporter(len(cells), echo=lines.append, heartbeat=False)
    thread = threading.Thread(target=lambda: result.update(run_cells(cells, out, reporter=reporter, poll_s=0.05)))
    thread.start()
    return thread, result, lines


def test_sweep_waits_for_the_cell_another_sweep_holds_and_counts_its_record(tmp_path, one_thread):
    cells = _cells(tmp_path)
    held_cell = cells[0]
    elsewhere = tmp_path / "elsewhere"
    run_cells([held_cell], elsewhere)  # what the other sweep will record
    out = tmp_path / "runs"
    lock = locks.claim(_path(out, held_cell).parent / LOCK_NAME)  # the other sweep holds the cell
    thread, result, lines = _sweep_in_thread(cells, out)
    wait_for(lambda: any(line.startswith("waiting for 1 cell run") for line in lines), 120, "the wait")
    time.sleep(0.3)
    assert thread.is_alive()  # neither returned nor trained the held cell itself
    assert not _path(out, held_cell).exists()
    waiting = next(line for line in lines if line.startswith("waiting for 1 cell run"))
    assert held_cell.label() in waiting and f"pid {lock_pid(lock)}" in waiting, waiting

    shutil.copy(_path(elsewhere, held_cell), _path(out, held_cell))  # the other sweep records it, and ends
    lock.release()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert result["others"] == [str(_path(out, held_cell))] and result["ok"] == [str(_path(out, cells[1]))]
    assert not result["failed"]
    assert _path(out, held_cell).read_bytes() == _path(elsewhere, held_cell).read_bytes()  # not rewritten here


def lock_pid(lock) -> int:
    return json.loads(lock.path.read_text())["pid"]


def test_a_failed_record_of_the_other_sweep_ends_the_wait_as_failed(tmp_path, one_thread):
    cells = _cells(tmp_path)
    held_cell = cells[0]
    out = tmp_path / "runs"
    lock = locks.claim(_path(out, held_cell).parent / LOCK_NAME)
    thread, result, lines = _sweep_in_thread(cells, out)
    wait_for(lambda: any(line.startswith("waiting for 1 cell run") for line in lines), 120, "the wait")
    failed = {"status": "failed", "config_hash": held_cell.hash, "error": {"type": "NonFiniteLoss",
                                                                          "message": "loss is nan", "step": 3}}
    _path(out, held_cell).write_text(json.dumps(failed))
    lock.release()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert result["failed"] == [str(_path(out, held_cell))] and not result["others"]
    assert json.loads(_path(out, held_cell).read_text()) == failed  # left as the other sweep wrote it


HOLD = """
import sys, time
from tiwbench.sweep import locks
lock = locks.claim(sys.argv[1])
print("held" if lock else "none", flush=True)
time.sleep(600)
"""


def test_claim_of_a_sweep_that_dies_while_waited_for_is_taken_over(tmp_path, one_thread):
    cells = _cells(tmp_path)
    held_cell = cells[0]
    out = tmp_path / "runs"
    lock_path = _path(out, held_cell).parent / LOCK_NAME
    lock_path.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        thread, result, lines = _sweep_in_thread(cells, out)
        wait_for(lambda: any(line.startswith("waiting for 1 cell run") for line in lines), 120, "the wait")
        assert thread.is_alive()
    finally:
        other.send_signal(signal.SIGKILL)  # it dies holding the claim: nobody releases it
        other.wait()
    assert lock_path.exists()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert sorted(result["ok"]) == sorted(str(_path(out, c)) for c in cells) and not result["others"]
    assert any("taking it over" in line for line in lines)
    assert not list(out.rglob(LOCK_NAME))
    assert json.loads(_path(out, held_cell).read_text())["status"] == "ok"


def test_exit_codes_complete_failed_and_bad_input(tmp_path, one_thread, monkeypatch):
    import tiwbench.sweep.runner as runner

    suite = tmp_path / "pair.yaml"
    suite.write_text(PAIR)
    cli = CliRunner()

    def args(out):
        return ["run", "--suite", str(suite), "--out", str(tmp_path / out), "--no-report"]

    r = cli.invoke(app, args("complete"))
    assert r.exit_code == 0 and "0 of 2 cells missing" in r.output, r.output
    real = runner.run_cell

    def broken(cell, *a, **k):  # one cell fails; the sweep goes on, and says so by its exit code
        if cell.method == "dsm_ref":
            raise RuntimeError("broken on purpose")
        return real(cell, *a, **k)

    monkeypatch.setattr(runner, "run_cell", broken)
    r = cli.invoke(app, args("one_failed"))
    assert r.exit_code == 1 and "1 failed; 1 of 2 cells missing" in r.output, r.output
    r = cli.invoke(app, [*args("bad"), "--profile", "no_such_profile"])
    assert r.exit_code == 2 and "error:" in r.output, r.output
    help_text = " ".join(cli.invoke(app, ["run", "--help"], terminal_width=200).output.split())
    assert "Exit codes: 0 every cell recorded" in help_text and "1 a cell failed or is missing" in help_text
    assert "2 bad input" in help_text and "130 / 143 stopped by SIGINT / SIGTERM" in help_text


def test_a_sweep_driven_from_python_is_the_command_without_its_parsing(tmp_path, one_thread):
    import pytest

    from tiwbench.config import ConfigError
    from tiwbench.sweep.request import SweepRequest, run_sweep

    suite = tmp_path / "pair.yaml"
    suite.write_text(PAIR)
    req = SweepRequest(suite=str(suite), methods=["dsm_ref"], out=tmp_path / "py", cache_dir=None)
    result = run_sweep(req)
    assert result.complete and [c.method for c in result.cells] == ["dsm_ref"] and len(result.summary["ok"]) == 1
    cli = CliRunner().invoke(app, ["run", "--suite", str(suite), "--methods", "dsm_ref", "--out",
                                   str(tmp_path / "py"), "--no-report"])
    assert cli.exit_code == 0 and "0 cells run, 1 already recorded" in cli.output  # the same cell, same hash
    with pytest.raises(ConfigError, match="--executor 'nowhere'"):
        run_sweep(SweepRequest(suite=str(suite), executor="nowhere", out=tmp_path / "bad"))
