"""Cell claims: a lock file per cell, so that sweeps sharing one results folder run each cell once.

The lock is created with O_EXCL (atomic on a local disk and on NFSv3+), holds the owner's host, pid,
process start time and the claim time, and is refreshed (its mtime) by a heartbeat thread. It is
stale, and taken over, when its process is gone from this host (pid absent, or reused by another
process: the start time differs), or when it comes from another host and has not been refreshed
for ``stale_after_s`` (a node that died cannot be asked). Breaking a stale lock happens under a
second short-lived lock, so two sweeps can never both break it and both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = "claim.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # 10 heartbeats missed: the owner on another host is presumed dead


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return started is None or _start_time(pid) in (None, started)


def owner(path: Path) -> dict | None:
    """The lock's owner record, or None when it is missing or being written (empty for an instant)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    info = owner(path)
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return False  # gone: nothing to break
    if info is None:  # unreadable: stale only if nobody finished writing it for a long time
        return age > stale_after_s
    if info.get("host") == socket.gethostname():
        return not _alive(int(info.get("pid", -1)), info.get("started"))
    return age > stale_after_s


class Claim:
    """A held lock; :meth:`release` (or leaving the ``with`` block) removes it."""

    def __init__(self, path: Path, heartbeat_s: float):
        self.path = path
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._refresh, args=(heartbeat_s,), daemon=True)
        self._beat.start()

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        info = owner(self.path)
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me))
    return True


def claim(path: Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> Claim | None:
    """Take the lock at ``path``; None when another live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create(path):
        return Claim(path, heartbeat_s)
    if is_stale(path, stale_after_s) and _break(path, stale_after_s) and _create(path):
        return Claim(path, heartbeat_s)
    return None


def _break(path: Path, stale_after_s: float) -> bool:
    """Remove a stale lock, checking again under ``<lock>.break`` that it is still the stale one."""
    guard = path.with_name(path.name + ".break")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a breaker that died between its two lines leaves the guard behind
            if time.time() - guard.stat().st_mtime > 60:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        if not is_stale(path, stale_after_s):
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        guard.unlink(missing_ok=True)
