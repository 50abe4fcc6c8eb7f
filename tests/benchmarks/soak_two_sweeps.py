"""Soak: two concurrent `tiwbench run` on one folder, one of them SIGKILLed at random and restarted.

    python tests/benchmarks/soak_two_sweeps.py SUITE.yaml OUT MINUTES

Afterwards compare OUT's records with one clean sweep of the same suite. Not part of the test run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    suite, out, minutes = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    cmd = [sys.executable, "-m", "tiwbench", "run", "--suite", suite, "--out", str(out), "--no-report",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)

    def start(i: int) -> subprocess.Popen:
        with open(f"{out}.log{i}", "a") as log:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)

    procs = [start(i) for i in range(2)]
    starts, kills, end = 2, 0, time.time() + minutes * 60
    while True:
        time.sleep(rng.uniform(1, 6))
        for i, p in enumerate(procs):
            if p.poll() is not None and not (p.returncode == 0 and time.time() > end):
                procs[i] = start(i)  # killed, or finished early: again (recorded cells are skipped)
                starts += 1
        if time.time() > end and all(p.poll() == 0 for p in procs):
            break
        if time.time() < end and rng.random() < 0.5:
            p = rng.choice(procs)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
    print(json.dumps({"starts": starts, "kills": kills}))


if __name__ == "__main__":
    main()
