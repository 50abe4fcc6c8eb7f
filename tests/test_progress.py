"""Progress in a log: timed lines per phase with rate and ETA, and a real cell with output to a pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiwbench.progress import PlainReporter, duration, rate_and_eta


class Cell:
    def label(self):
        return "toy2d dsm_obs ref=0.05 seed=0"


def test_plain_lines_every_interval_and_at_the_end():
    now = [0.0]
    lines = []
    rep = PlainReporter(2, echo=lines.append, interval=30, clock=lambda: now[0])
    rep.start(Cell())
    update = rep.phase("train", 1000)
    for step in range(1, 1001):  # 0.1 s a step: 100 s in all
        now[0] = step * 0.1
        update(step, 1000)
    update(1000, 1000)  # a repeated end is not printed twice
    body = lines[1:]
    # at 30, 60 and 90 s, then the end at 100 s
    assert [re.search(r"train (\d+)/1000", x).group(1) for x in body] == ["300", "600", "900", "1000"]
    assert body[0] == "[1/2] toy2d dsm_obs ref=0.05 seed=0 · train 300/1000 (30%), 10/s, ETA 1m10s"
    assert body[-1].endswith("train 1000/1000 (100%), 10/s, took 1m40s")


def test_a_slow_phase_still_prints_every_interval():
    # one sampling batch (or a step-less phase) longer than the interval: the heartbeat speaks for it
    import time

    lines, stamps = [], []
    rep = PlainReporter(1, echo=lambda m: (lines.append(m), stamps.append(time.monotonic())), interval=0.4)
    try:
        rep.start(Cell())
        update = rep.phase("sample", 2)
        update(0, 2)
        time.sleep(1.5)
        update(2, 2)
    finally:
        rep.close()
    middle = [x for x in lines if "sample 0/2" in x]
    assert len(middle) >= 2, lines  # ~3 in 1.5 s
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 0.4 + 0.3, stamps
    assert lines[-1].endswith("took 2s") or "sample 2/2 (100%)" in lines[-1]


def test_rate_eta_and_duration():
    assert rate_and_eta(25, 100, 5.0) == (5.0, 15.0)
    assert duration(59.6) == "1m00s" and duration(4000) == "1h06m" and duration(3) == "3s"


@pytest.mark.slow
def test_piped_digits_cell_prints_each_phase(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text("""name: tiny
datasets: [digits_lt]
methods: [tiw_dsm]
ref_fracs: [0.05]
seeds: [0]
metrics: [fd, bias]
profiles:
  smoke:
    digits_lt:
      train: {steps: 60, batch_size: 32, channels: 8, lr_warmup: 10, ema_halflife: 10}
      ratio: {steps: 40, batch_size: 16, channels: 8}
      sample: {n: 100, steps: 4, batch_size: 50}
      evaluator: {epochs: 2, width: 8}
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tiwbench", "run", "--suite", str(suite), "--profile", "smoke",
                           "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
                           "--no-report", "--progress-every", "0.2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    label = "[1/1] digits_lt tiw_dsm ref=0.05 seed=0 · "
    for phase in ("evaluator training", "ratio (time)", "train", "sample", "reference features (evaluator)",
                  "sample features (evaluator)"):
        mine = [x for x in lines if x.startswith(label + phase + " ")]
        assert mine, f"no progress line of {phase!r} in:\n{proc.stderr}"
        assert re.search(r" (\d+)/\1 \(100%\), .*took ", mine[-1]), mine[-1]  # the phase's end is said
    timed = [x for x in lines if x.startswith(label + "train ") and "ETA" in x]
    assert timed, "training took more than 0.2 s but printed no line before its end"
    assert any(x.startswith("[1/1] digits_lt tiw_dsm ref=0.05 seed=0: fd=") for x in lines)
    cell = Path(tmp_path / "runs" / "tiny" / "digits_lt" / "tiw_dsm" / "ref0.05_seed0")
    assert (cell / "samples.png").is_file()
