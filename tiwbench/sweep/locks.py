"""Cell claims: a lock file per cell, so that sweeps sharing one results folder run each cell once.

A claim is a file ``claim.lock`` holding its owner's identity: a random token, the kernel's boot id,
the pid namespace, the pid and the process's start time. It appears with its content in one step
(written to a private file, then hard-linked into place, which fails if the name exists: atomic on a
local disk and on NFS), so a lock is never seen half-written.

The owner holds a lease: a heartbeat thread renews the file's mtime every ``heartbeat_s``, and the
lock is stale when it has not been renewed for ``stale_after_s``. Ages are measured on the folder's
own clock (the mtime of a file just touched there), never against this host's clock, so clock skew
between hosts does not age or rejuvenate a lock. A process can also be asked directly, but only when
the pid means the same thing to the observer: same boot id and same pid namespace (a container, or
``unshare --pid``, on the same host sees other pids; a host name alone says nothing).

The owner checks its lease before it writes its record (:meth:`Claim.confirm`, a fenced write): an
owner that was paused past its lease (SIGSTOP, a frozen node) and lost the cell to another sweep
finds another token in the file and writes nothing. Release deletes the file only if it still holds
the owner's token. Breaking a stale lock happens under a guard (``filelock``: an OS lock the kernel
drops when its holder dies), which re-reads the lock and breaks it only if it still is the very lock
judged stale (same token, still stale); every break is logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import filelock

LOCK_NAME = "claim.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # 10 heartbeats missed: the owner is presumed dead (or paused: it then writes nothing)
JOB_ENV = "TIWBENCH_JOB_ID"  # set in a submitit job: its id goes into its claims, so a stopped sweep can clear them
WRITE_GRACE_S = 30.0  # an empty or undecodable lock older than this is damage, not a lock being written

log = logging.getLogger("tiwbench.locks")


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


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


def identity() -> dict:
    """Who this process is, in terms another process can check: see the module's docstring."""
    return {"token": uuid.uuid4().hex, "boot_id": boot_id(), "pidns": pid_namespace(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": _start_time(os.getpid()), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "job": os.environ.get(JOB_ENV)}


def owner(path: Path) -> dict | None:
    """The lock's owner record; None when it is missing, empty or not a record. A lock that cannot be
    read (permissions) raises its OSError: that is neither free nor damaged."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text) if text else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def folder_now(directory: Path) -> float:
    """The current time on ``directory``'s file system clock (the server's, on NFS)."""
    probe = Path(directory) / f".clock-{uuid.uuid4().hex}"
    try:
        probe.touch()
        return probe.stat().st_mtime
    except OSError:  # a read-only folder: fall back to this host's clock
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def _checkable_here(info: dict) -> bool:
    """True when the owner's pid can be asked from this process: same boot, same pid namespace."""
    return (info.get("boot_id") is not None and info.get("boot_id") == boot_id()
            and info.get("pidns") is not None and info.get("pidns") == pid_namespace())


def is_stale(path: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """True when the lock at ``path`` may be broken; False when it is held, absent or unreadable."""
    path = Path(path)
    try:
        info = owner(path)
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False  # gone: nothing to break
    except OSError as e:  # unreadable (another user's, 0600): cannot be judged, so it is respected
        log.warning("cannot read the claim %s (%s); treating it as held", path, e)
        return False
    age = folder_now(path.parent) - mtime
    if info is None:  # empty or damaged: locks appear complete, so only damage looks like this
        return age > WRITE_GRACE_S
    if _checkable_here(info):
        return not _alive(int(info.get("pid", -1)), info.get("started"))
    return age > stale_after_s


class LeaseLost(RuntimeError):
    pass


class Claim:
    """A held lock: renewed while it lives; :meth:`confirm` before writing; :meth:`release` at the end."""

    def __init__(self, path: Path, token: str, heartbeat_s: float):
        self.path, self.token = Path(path), token
        self.lost = False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._refresh, args=(heartbeat_s,), daemon=True)
        self._beat.start()

    def holds(self) -> bool:
        """The lock file still carries this claim's token."""
        try:
            info = owner(self.path)
        except OSError:
            return False
        return info is not None and info.get("token") == self.token

    def _renew(self) -> bool:
        if self.lost or not self.holds():
            self.lost = True
            return False
        try:
            os.utime(self.path)
        except OSError:
            self.lost = True
            return False
        return True

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self._renew():
                log.warning("lost the claim %s: another sweep took it after its lease ran out", self.path)
                return

    def confirm(self) -> bool:
        """Renew the lease and say whether it is still ours; call it just before writing the record."""
        return self._renew()

    def release(self) -> None:
        """Remove the lock if it is still this claim's (compare-and-delete by token)."""
        self._stop.set()
        aside = self.path.with_name(f".{self.path.name}.{self.token}.release")
        try:
            os.rename(self.path, aside)  # atomic: from here on nobody else can delete or judge it
        except FileNotFoundError:
            return
        try:
            info = owner(aside)
        except OSError:
            info = None
        if info is not None and info.get("token") == self.token:
            aside.unlink(missing_ok=True)
            return
        try:  # another sweep's lock (ours was broken and retaken): put it back unless a newer one exists
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, me: dict) -> bool:
    """Make the lock with its content in one step: a private file, hard-linked to the lock's name."""
    tmp = path.with_name(f".{path.name}.{me['token']}.new")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides group/other access
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def claim(path: Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> Claim | None:
    """Take the lock at ``path``; None when another live owner holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = identity()
    if _create(path, me):
        return Claim(path, me["token"], heartbeat_s)
    try:
        seen = owner(path)
    except OSError as e:  # unreadable (another user's, 0600): cannot be judged, so it is respected
        log.warning("cannot read the claim %s (%s); treating it as held", path, e)
        return None
    if is_stale(path, stale_after_s) and _break(path, seen, stale_after_s) and _create(path, me):
        return Claim(path, me["token"], heartbeat_s)
    return None


def _guard(path: Path) -> filelock.BaseFileLock:
    return filelock.FileLock(str(path.with_name(path.name + ".break")), timeout=0)


def _break(path: Path, seen: dict | None, stale_after_s: float) -> bool:
    """Remove the stale lock ``seen`` at ``path``, under the guard, only if it is still that lock and
    still stale: another sweep may have broken it and claimed the cell since we looked."""
    try:
        with _guard(path):
            if owner(path) != seen or not is_stale(path, stale_after_s):
                return False
            path.unlink(missing_ok=True)
    except filelock.Timeout:  # another sweep is breaking it now
        return False
    who = "an empty or damaged lock" if seen is None else (
        f"owner pid {seen.get('pid')} on {seen.get('host')} (token {str(seen.get('token'))[:8]})")
    log.warning("broke the stale claim %s: %s", path, who)
    return True
