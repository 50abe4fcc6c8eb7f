"""Damaged cache and checkpoint files: detected when loaded, reported in one line, moved aside.

Every cache here (training checkpoints, evaluator weights, reference statistics, decoded images) can
be rebuilt from its inputs, so a file that fails to load, or whose content no longer matches the hash
stored with it, is renamed ``<name>.corrupt-<time>`` (kept for inspection, never read again) and the
caller rebuilds it. A truncated write cannot cause this (all writes go through a temp file and a
rename); a full disk, a copy cut short, or bit rot can.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


class Damaged(ValueError):
    """A file that loaded but whose content is not what was written (hash or structure)."""


class Unreadable(PermissionError):
    """A cache file this user may not read (another user's, in a shared cache): not damage, so it is
    never moved aside; the sweep stops with the file's name and the fix."""


# What a damaged file raises from torch.load / np.load / json.loads (truncated zip, bad CRC, bad header,
# unpickling garbage, a missing key).
LOAD_ERRORS = (Damaged, OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, IndexError,
               zipfile.BadZipFile, pickle.UnpicklingError, json.JSONDecodeError)


def move_aside(path: Path, reason: str, what: str, echo: Callable[[str], None] | None = None,
               companions: tuple[Path, ...] = ()) -> Path:
    """Rename ``path`` (and its ``companions``, e.g. a sidecar) to ``*.corrupt-<time>``; say so once."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    for p, q in ((path, aside), *((c, c.with_name(f"{c.name}.corrupt-{stamp}-{os.getpid()}")) for c in companions)):
        try:
            os.replace(p, q)
        except FileNotFoundError:  # another process moved it first
            pass
    (echo or _stderr)(f"warning: damaged {what} {path} ({reason}); moved to {aside.name}, rebuilding it")
    return aside


def load_or_move_aside(path: Path, load: Callable[[Path], T], what: str, echo: Callable[[str], None] | None = None,
                       companions: tuple[Path, ...] = ()) -> T | None:
    """``load(path)``; on a damaged file move it aside (see :func:`move_aside`) and return None. A file
    (or its companion) this user may not read raises :class:`Unreadable`: it is someone else's valid file."""
    try:
        return load(path)
    except PermissionError as e:
        where = e.filename or path
        raise Unreadable(f"cannot read the {what} {where}: permission denied (it belongs to another user); "
                         f"ask its owner for group read access (chmod g+r) or use a cache folder of your own") from None
    except LOAD_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        move_aside(path, f"{type(e).__name__}: {msg}"[:200], what, echo, companions)
        return None


def tensors_digest(obj) -> str:
    """sha256 over every tensor/array in a nested dict/list (in key order), with keys and shapes."""
    h = hashlib.sha256()

    def walk(o, key: str) -> None:
        if isinstance(o, dict):
            for k in sorted(o, key=str):
                walk(o[k], f"{key}/{k}")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{key}/{i}")
        elif isinstance(o, torch.Tensor):
            h.update(f"{key}:{o.dtype}:{tuple(o.shape)}".encode())
            h.update(o.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, np.ndarray):
            h.update(f"{key}:{o.dtype}:{o.shape}".encode())
            h.update(np.ascontiguousarray(o).tobytes())
        else:
            h.update(f"{key}={o!r}".encode())

    walk(obj, "")
    return h.hexdigest()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
