"""Progress of a sweep: the cell line, and each long phase's step/total, rate and ETA.

On a terminal rich draws live bars. Anywhere else (a pipe, a log file, Slurm) rich would print only at
the end, so :class:`PlainReporter` writes one timed line per phase at least every ``interval`` seconds
and at the phase's end. Code below the runner (evaluator training, feature extraction) reports through
:func:`phase`, which goes to whichever reporter the runner made current with :func:`using`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

INTERVAL_ENV = "TIWBENCH_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between lines of one phase in a log

Callback = Callable[[int, int], None]


def default_interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"${INTERVAL_ENV}={raw!r} is not a number of seconds; unset it or set e.g. 30") from None


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def rate_and_eta(done: int, total: int, elapsed: float) -> tuple[float, float]:
    """Steps per second so far, and the seconds left at that rate (NaN before the first step)."""
    if done <= 0 or elapsed <= 0:
        return float("nan"), float("nan")
    rate = done / elapsed
    return rate, max(total - done, 0) / rate


class PlainReporter:
    """Log lines for a non-terminal (CI logs, pipes, Slurm): rich's bar would print only at the end.

    Lines come from the phases' callbacks, and from a heartbeat thread whenever nothing was printed for
    ``interval`` seconds: a phase whose steps are slow (or that has no steps: loading, a metric's
    feature extraction) still says where it is, so a log is never silent longer than ``interval``.
    """

    def __init__(self, total: int, echo=print, interval: float | None = None, clock=time.monotonic,
                 heartbeat: bool = True):
        self.total, self.done, self._echo, self.clock = total, 0, echo, clock
        self.interval = default_interval() if interval is None else float(interval)
        self.label = ""
        self._said = time.monotonic()  # when the last line went out (real time, whatever ``clock`` is)
        self._now: dict[str, Any] | None = None  # the open phase: name, done, total, start, prefix, last
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        if heartbeat and self.interval > 0:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()

    def echo(self, message: str) -> None:
        self._said = time.monotonic()
        self._echo(message)

    def _heartbeat(self) -> None:
        tick = min(1.0, self.interval / 4)
        while not self._stop.wait(tick):
            if time.monotonic() - self._said < self.interval - tick or not self.label:
                continue
            with self._lock:  # never between a phase's state change and its own line
                p = self._now
                if p is None:
                    self.echo(f"{self._prefix()} · still running")
                    continue
                now = self.clock()
                p["last"] = now
                self.echo(self._line(p["prefix"], p["name"], p["done"], p["total"], now - p["t0"]))

    @staticmethod
    def _line(prefix: str, name: str, done: int, total: int, elapsed: float) -> str:
        rate, eta = rate_and_eta(done, total, elapsed)
        pct = 100.0 * done / total if total else 100.0
        tail = f"{rate:.3g}/s, " if rate == rate else ""
        when = f"ETA {duration(eta)}" if done < total and eta == eta else (
            f"took {duration(elapsed)}" if done >= total else f"{duration(elapsed)} so far")
        return f"{prefix} · {name} {done}/{total} ({pct:.0f}%), {tail}{when}"

    def _prefix(self) -> str:
        return f"[{self.done + 1}/{self.total}] {self.label}" if self.label else "[setup]"

    def start(self, cell):
        self.label = cell.label()
        self.echo(f"{self._prefix()} ...")

    def phase(self, name: str, total: int) -> Callback:
        """A callback ``(done, total)`` for one phase; it prints when ``interval`` has passed and at the end."""
        t0 = self.clock()
        state = {"name": name, "done": 0, "total": total, "t0": t0, "prefix": self._prefix(), "last": t0}
        self._now = state
        ended = [False]

        def update(done: int, total: int = total):
            now = self.clock()
            with self._lock:
                state["done"], state["total"] = done, total
                if ended[0] or (done < total and now - state["last"] < self.interval):
                    return
                state["last"], ended[0] = now, done >= total  # the end is said once
                if ended[0] and self._now is state:
                    self._now = None
                self.echo(self._line(state["prefix"], name, done, total, now - t0))

        return update

    def finish(self, cell, rec: dict, skipped: bool = False):
        self.done += 1
        self.label, self._now = "", None
        if skipped:
            self.echo(f"[{self.done}/{self.total}] {cell.label()}: done earlier (config unchanged), skipped")
        elif rec["status"] == "ok":
            vals = ", ".join(f"{m['name']}={m['value']:.4g}" for m in rec["metrics"])
            self.echo(f"[{self.done}/{self.total}] {cell.label()}: {vals} ({rec['timing']['total']:.1f} s)")
        else:
            self.echo(f"[{self.done}/{self.total}] {cell.label()}: FAILED: {rec['error']['message']}")

    def close(self):
        self._stop.set()


class RichReporter(PlainReporter):
    """Live bars on a terminal: the cells, and the current phase with its rate and time left."""

    def __init__(self, total: int, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(total, echo=console.print, heartbeat=False)  # the live bars show it
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.progress.start()
        self.cells = self.progress.add_task("cells", total=total)
        self.sub = self.progress.add_task("", total=1, visible=False)

    def start(self, cell):
        self.label = cell.label()
        self.progress.update(self.cells, description=f"cells: {cell.label()}")

    def phase(self, name: str, total: int) -> Callback:
        self.progress.reset(self.sub, total=total, description=f"  {name}", visible=True)
        every = max(1, total // 100)

        def update(done: int, total: int = total):
            if done % every == 0 or done == total:
                self.progress.update(self.sub, completed=done)

        return update

    def finish(self, cell, rec: dict, skipped: bool = False):
        super().finish(cell, rec, skipped)
        self.progress.advance(self.cells)

    def close(self):
        self.progress.stop()


class _Silent:
    def phase(self, name: str, total: int) -> Callback:
        return lambda done, total=total: None


_CURRENT: list[Any] = [_Silent()]


@contextlib.contextmanager
def using(reporter) -> Iterator[None]:
    """Make ``reporter`` the one :func:`phase` reports to, for the duration of a sweep."""
    _CURRENT.append(reporter)
    try:
        yield
    finally:
        _CURRENT.pop()


def phase(name: str, total: int) -> Callback:
    """A progress callback for a phase run below the runner (silent when no sweep is reporting)."""
    return _CURRENT[-1].phase(name, total)
