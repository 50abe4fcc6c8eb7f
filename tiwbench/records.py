"""Records: one JSON per cell, written atomically (temp file + fsync + rename)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"


_UMASK = os.umask(0)
os.umask(_UMASK)


def current_umask() -> int:
    """The process's umask now, read without changing it (Linux); the one at import elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK


def shared_temp(folder: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` with the permissions of an ordinary new file (0666 less the umask), not 0600:
    caches and results are shared by a group when the umask lets them be."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    os.chmod(tmp, 0o666 & ~current_umask())
    return fd, tmp


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = shared_temp(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


_ENV: dict[str, Any] | None = None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Package versions, git sha and dirty flag, device and threads: where a number came from."""
    global _ENV
    if _ENV is None:
        pkgs = {}
        for p in ("tiwbench", "torch", "numpy", "scipy", "torch-fidelity", "clean-fid", "scikit-learn"):
            try:
                pkgs[p] = version(p)
            except PackageNotFoundError:
                pkgs[p] = None
        status = _git("status", "--porcelain", "--untracked-files=no")
        _ENV = {"packages": pkgs, "git_sha": _git("rev-parse", "HEAD"),
                "git_dirty": bool(status) if status is not None else None,
                "python": platform.python_version(), "platform": platform.platform()}
    import torch

    ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
    dev = {"device": device, "threads": torch.get_num_threads(),
           "world_size": torch.distributed.get_world_size() if ddp else 1}  # processes training data-parallel
    if device.startswith("cuda") and torch.cuda.is_available():
        dev["device_name"] = torch.cuda.get_device_name()
    return {**_ENV, **dev}


def cell_dir(out: Path, suite: str, dataset: str, method: str, ref_frac: float, seed: int,
             sweep: dict[str, Any] | None = None) -> Path:
    """``ref<frac>_seed<seed>``, with the swept dataset parameter between them when a suite sweeps one."""
    swept = "".join(f"_{k}{v:g}" if isinstance(v, (int, float)) else f"_{k}{v}" for k, v in (sweep or {}).items())
    return Path(out) / suite / dataset / method / f"ref{ref_frac:g}{swept}_seed{seed}"


def load_records(runs: Path) -> list[dict[str, Any]]:
    """Every record under ``runs``; temp files of an interrupted write are never read, and a record that
    contradicts itself (:func:`contradictions`) is refused with its path."""
    records = []
    for p in sorted(Path(runs).rglob(RECORD_NAME)):
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not a valid record ({e}); delete it and re-run the cell") from None
        found = contradictions(rec, p)
        if found:  # tabulated, it would stand for a cell it is not
            raise ValueError(f"{p}: the record contradicts itself ({'; '.join(found)}); it is not reported: "
                             f"delete its directory and re-run the cell")
        rec["_path"] = str(p)
        records.append(rec)
    return records


CELL_FIELDS = ("suite", "dataset", "method", "ref_frac", "seed", "profile")


def contradictions(rec: dict[str, Any], path: Path | None = None) -> list[str]:
    """What in a record disagrees with itself: a field and its config, the swept point and the dataset
    parameter it sets, the cell directory and the cell, a ratio model and the estimator that names it.
    Empty for a consistent record; only what the record holds is compared (old or hand-made records
    lack parts of the config)."""
    found = []
    cfg = rec.get("config") or {}
    for key in CELL_FIELDS:
        if key in cfg and key in rec and cfg[key] != rec[key]:
            found.append(f"{key} {rec[key]!r} but config.{key} {cfg[key]!r}")
    swept = rec.get("sweep") or {}
    if ("sweep" in cfg or "dataset_params" in cfg) and (cfg.get("sweep") or {}) != swept:
        found.append(f"sweep {swept} but config.sweep {cfg.get('sweep') or {}}")
    params = cfg.get("dataset_params")
    for key, value in [*swept.items(), *(cfg.get("sweep") or {}).items()]:
        said = f"sweep {key}={value} but config.dataset_params.{key}={(params or {}).get(key, '(unset)')}"
        if params is not None and (key not in params or params[key] != value) and said not in found:
            found.append(said)
    if path is not None and all(k in rec for k in ("dataset", "method", "ref_frac", "seed")):
        # a directory named like a cell (ref<frac>…_seed<seed>) must be this record's cell
        named = cell_dir(Path(), rec.get("suite") or "", rec["dataset"], rec["method"], rec["ref_frac"],
                         rec["seed"], swept)
        here = Path(path).parent
        looks_like_cell = here.name.startswith("ref") and "_seed" in here.name
        if looks_like_cell and here.parts[-len(named.parts):] != named.parts:
            found.append(f"filed under {'/'.join(here.parts[-len(named.parts):])} but its config is the cell "
                         f"{named.as_posix()}")
    found += _ratio_contradictions(rec, cfg)
    return found


def _ratio_contradictions(rec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """Each ratio model is keyed ``<kind>[@<estimator>][~<kernel>]``; no ``@``: the config's estimator."""
    from tiwbench.registry import RATIOS, RegistryError

    def canonical(name: str) -> str:
        try:
            return RATIOS.get(name).name
        except (RegistryError, AttributeError):  # a plugin not installed here: its name as written
            return name

    found = []
    default = (cfg.get("ratio") or {}).get("provider")
    for key, info in (rec.get("ratio") or {}).items():
        if not isinstance(info, dict):
            continue
        kind_estimator, _, kernel = key.partition("~")
        named = kind_estimator.partition("@")[2] or default
        if named and info.get("provider") and canonical(named) != canonical(info["provider"]):
            found.append(f"ratio model {key!r} names estimator {named!r} but was fitted by {info['provider']!r}")
        if "provider" in info and (info.get("kernel") or "") != kernel:
            found.append(f"ratio model {key!r} but fitted under kernel {info.get('kernel') or 'edm'!r}")
    return found
