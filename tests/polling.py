"""Waiting in the sweep tests for something another process does (a claim, a job, a record)."""

import time


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy value, polled every 20 ms; an AssertionError naming ``what`` after
    ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = predicate()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
