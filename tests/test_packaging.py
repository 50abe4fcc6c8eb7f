"""What a user installs: ranges (no exact pins) on torch and torchvision in the package metadata, exact
pins only in the set-up step; and a missing extra named before any cell runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiwbench.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _requirements(metadata: str) -> dict[str, list[str]]:
    reqs: dict[str, list[str]] = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0).lower().replace("_", "-")
            reqs.setdefault(name, []).append(spec)
    return reqs


@pytest.mark.slow
def test_built_wheel_does_not_pin_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("tiwbench-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = _requirements(meta)
    for name in ("torch", "torchvision"):
        assert reqs.get(name), f"{name} is not declared at all"
        for spec in reqs[name]:
            version = spec.split(";")[0]  # the marker (extra == "fid") is not a version pin
            assert "==" not in version and ">=" in version, spec
    # the suites are package data: a non-editable install finds `--suite ref_size`
    names = set(zipfile.ZipFile(wheel).namelist())
    for suite in (ROOT / "suites").glob("*.yaml"):
        assert f"tiwbench/suites/{suite.name}" in names, f"{suite.name} is not in the wheel"
    # the set-up step keeps the exact CPU builds
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\d", pins, re.M) and re.search(r"^torchvision==\d", pins, re.M)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_declared_lower_bounds_are_the_tested_builds():
    # the tests run on constraints.txt's pins: the lowest torch and torchvision claimed is exactly those
    declared = (ROOT / "pyproject.toml").read_text()
    pins = (ROOT / "constraints.txt").read_text()
    for name in ("torch", "torchvision"):
        pinned = re.search(rf"^{name}==([\d.]+)", pins, re.M).group(1)
        lower = re.search(rf'"{name}>=([\d.]+)', declared).group(1)
        assert lower == pinned, f"{name}>={lower} declared, {pinned} tested: declare the tested build"
    import torch

    assert torch.__version__.split("+")[0] == re.search(r"^torch==([\d.]+)", pins, re.M).group(1)


def test_missing_extra_is_named_before_any_cell(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "torch_fidelity" else real(name, *a, **k))
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["run", "--suite", "ref_size_digits", "--profile", "smoke", "--out", str(out),
                                 "--cache-dir", str(tmp_path / "cache"), "--no-report"])
    assert r.exit_code == 2
    lines = [x for x in r.output.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "tiwbench[fid]" in lines[0] and "'fd' on digits_lt" in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_missing_cluster_extra_is_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "submitit" else real(name, *a, **k))
    r = CliRunner().invoke(app, ["run", "--suite", "smoke", "--executor", "local", "--out", str(tmp_path / "runs"),
                                 "--no-report"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "tiwbench[cluster]" in lines[0], r.output
