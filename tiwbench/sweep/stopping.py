"""Stopping a sweep: SIGINT and SIGTERM end it cleanly, and re-running the command resumes it.

Python turns SIGINT into KeyboardInterrupt but dies on SIGTERM without running any cleanup, so a sweep
stopped by a scheduler or ``kill`` left its claims behind, and under ``--executor local`` or ``slurm``
its jobs running. While :func:`stop_on_signals` is active both signals raise :class:`Stopped` (a
KeyboardInterrupt, so no ``except Exception`` swallows it) in the main thread: the runner releases its
claims on the way out, records are written whole or not at all (tiwbench.records' atomic writes), and
the executor cancels the jobs it submitted (:func:`stop_jobs`) and waits for them to exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tiwbench.sweep import locks

SIGNALS = (signal.SIGINT, signal.SIGTERM)
log = logging.getLogger("tiwbench.stopping")


class Stopped(KeyboardInterrupt):
    """The sweep was asked to stop by ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _State:
    installed = False  # stop_on_signals is active
    stopping = False  # a stop was raised: later signals are only noted
    defer = 0  # inside signals_deferred: a signal waits for the block's end
    pending: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` once; a repeated signal while the sweep stops is noted,
    not raised, so that the cancelling and waiting are not cut short. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _State.stopping:
            log.warning("%s again: still stopping (waiting for the sweep's jobs to exit)",
                        signal.Signals(signum).name)
            return
        if _State.defer:
            _State.pending = signum
            return
        _State.stopping = True
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    _State.installed, _State.stopping, _State.pending = True, False, None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _State.installed = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold a stop across a few statements (a job's submission and its bookkeeping), so that it never falls
    between a job starting and the sweep knowing it: raised at the block's end. (A flag, not a signal
    mask: in a process with threads the kernel may hand the signal to a thread that does not block it.)"""
    _State.defer += 1
    try:
        yield
    finally:
        _State.defer -= 1
        if not _State.defer and _State.pending is not None and _State.installed and not _State.stopping:
            signum, _State.pending = _State.pending, None
            _State.stopping = True
            raise Stopped(signum)


def stop_jobs(jobs: list, kind: str, timeout_s: float = 120.0, poll_s: float = 0.2) -> list:
    """Cancel ``jobs`` (this sweep's own, nobody else's) and wait up to ``timeout_s`` for them to exit:
    local jobs through submitit's cancel (SIGINT to the job, whose cells release their claims), Slurm
    jobs by one ``scancel`` of their ids. Returns the jobs still not ended."""
    live = [j for j in jobs if not _done(j)]
    if kind == "slurm":
        if live:
            subprocess.call(["scancel", *[str(j.job_id) for j in live]])
    else:
        for j in live:
            j.cancel(check=False)
    end = time.monotonic() + timeout_s
    while live and time.monotonic() < end:
        time.sleep(poll_s)
        live = [j for j in live if not _done(j)]
    return live


def _done(job) -> bool:
    try:
        return job.done(force_check=True)
    except Exception:  # the scheduler cannot say (e.g. sacct down): treat it as still running
        return False


def clear_claims(cell_dirs: list[Path], job_ids: set[str]) -> list[Path]:
    """Remove the claims in ``cell_dirs`` that jobs ``job_ids`` of this sweep left (a job killed before it
    could release them); only once those jobs have ended. Claims of anyone else are left alone."""
    cleared = []
    for d in cell_dirs:
        lock = Path(d) / locks.LOCK_NAME
        try:
            info = locks.owner(lock)
        except OSError:
            continue
        if info is None or str(info.get("job")) not in job_ids:
            continue
        if locks.owner(lock) == info:  # unchanged since read: still the dead job's
            lock.unlink(missing_ok=True)
            log.warning("removed the claim %s left by cancelled job %s", lock, info.get("job"))
            cleared.append(lock)
    return cleared
