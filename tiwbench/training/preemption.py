"""A preemption or time-limit signal, held until the training loop is between two steps.

Slurm (and submitit's local executor) signal a job some time before killing it; submitit's handler
then asks the job's ``checkpoint()`` for its resubmission, requeues it and exits. Run at once, from
inside an optimiser step, it would leave nothing to resume from. :func:`hold` puts a handler in front
of it that only records the signal: the training loop sees :func:`pending` after its next step, saves
its checkpoint and calls :func:`release`, which runs submitit's handler. Outside a training loop
(data, ratio models, sampling) nothing would release it, so a timer hands the signal on after
``grace_s`` (the cell is then redone from its last checkpoint, which gives the same numbers).
"""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Callable

_HOLD: _Hold | None = None


class _Hold:
    def __init__(self, handler: Callable, grace_s: float):
        self.handler, self.grace_s = handler, grace_s
        self.signum: int | None = None
        self.timer: threading.Timer | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is not None:  # the timer ran out (or a second signal came): hand it on now
            self.release()
            return
        self.signum = signum
        # interrupt_main runs this handler again in the main thread, where submitit's may exit
        self.timer = threading.Timer(self.grace_s, _thread.interrupt_main, (signum,))
        self.timer.daemon = True
        self.timer.start()

    def release(self) -> None:
        signum, self.signum = self.signum, None
        if signum is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        try:
            self.handler(signum, None)  # submitit: checkpoint(), requeue, exit
        except Exception as e:  # not requeued (e.g. timed out too often): end the job, not just this cell
            raise SystemExit(f"{type(e).__name__}: {e}") from e


def hold(signum: int, grace_s: float = 30.0) -> None:
    """Defer the Python handler installed for ``signum`` (submitit's) to the next :func:`release`,
    or ``grace_s`` seconds, whichever comes first. A no-op when no Python handler is installed."""
    global _HOLD
    previous = signal.getsignal(signum)
    if isinstance(previous, _Hold):
        previous = previous.handler
    if not callable(previous):
        return
    _HOLD = _Hold(previous, grace_s)
    signal.signal(signum, _HOLD)


def pending() -> bool:
    """True once a held signal waits for the training loop to save and release it."""
    return _HOLD is not None and _HOLD.signum is not None


def release() -> None:
    """Run the held handler now (submitit's requeues the job and exits)."""
    if _HOLD is not None:
        _HOLD.release()
