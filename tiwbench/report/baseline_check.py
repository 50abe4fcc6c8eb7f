"""Regression checks against a committed baseline.

A baseline holds, per (suite, dataset, method, ref_frac, metric, and swept point if any), the mean, std
and number of seeds of a reference run, the metric's direction and a tolerance. A fresh run is compared
cell by cell with the metric's direction: worse than the baseline by more than the tolerance is a
regression, better by more than the tolerance an improvement (to be recorded in a new baseline). A cell
that fails in the fresh run but not in the baseline, or that is missing, also fails the check.

Tolerance rule (per cell, from the baseline's own spread over seeds):

    tolerance = max(abs_floor, k · std, rel · |mean|)

with defaults k = 3 (seed noise: the difference of two means of n seeds has std σ·√(2/n) ≈ 0.8σ for
n = 3, so 3σ is about 3.7 standard errors), rel = 0.05 (5 % of the value, which is what remains when the
baseline has one seed and no std) and abs_floor = 1e-6 (so that a baseline of exactly 0 with no spread is
not compared bit for bit).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.records import atomic_write_text
from tiwbench.report.intervals import ReportError
from tiwbench.report.leaderboard import aggregate, direction, records_frame

BASELINE_KIND = "tiwbench.baseline"
BASELINE_SCHEMA = 1


@dataclass(frozen=True)
class ToleranceRule:
    k: float = 3.0  # multiples of the baseline's std over seeds
    rel: float = 0.05  # fraction of |baseline mean|
    abs_floor: float = 1e-6  # never tighter than this

    def __call__(self, mean: float, std: float) -> float:
        std = 0.0 if std is None or not math.isfinite(std) else std
        return max(self.abs_floor, self.k * std, self.rel * abs(mean))

    def check(self) -> ToleranceRule:
        for name, v in asdict(self).items():
            if not (math.isfinite(v) and v >= 0):
                raise ReportError(f"tolerance {name}={v} must be a finite number >= 0")
        return self


Key = tuple[str, str, str, float, str, str]  # suite, dataset, method, ref_frac, metric, swept point ("" if none)


def _point(x_name: str, x: Any) -> str:
    """A swept suite's point, e.g. ``dim=16``: cells of one ref_frac at two points are two cells."""
    return "" if x_name == "ref_frac" else f"{x_name}={float(x):g}"


def _key(suite: str, dataset: str, method: str, ref_frac: float, metric: str, point: str = "") -> Key:
    return (str(suite), str(dataset), str(method), round(float(ref_frac), 12), str(metric), point)


def _row_key(r) -> Key:
    return _key(r.suite, r.dataset, r.method, r.ref_frac, r.metric, _point(r.x_name, r.x))


def _entry_key(e: dict[str, Any]) -> Key:
    point = next((_point(name, x) for name, x in (e.get("sweep") or {}).items()), "")
    return _key(e["suite"], e["dataset"], e["method"], e["ref_frac"], e["metric"], point)


def key_label(k: Key) -> str:
    return f"{k[0]}/{k[1]}/{k[2]}/ref{k[3]:g}/{k[5] + '/' if k[5] else ''}{k[4]}"


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# -- baseline -----------------------------------------------------------------------------------------
def make_baseline(records: list[dict[str, Any]], rule: ToleranceRule = ToleranceRule(),
                  source: str | None = None) -> dict[str, Any]:
    """The baseline document for ``records`` (pure: no I/O)."""
    rule.check()
    df = records_frame(records)
    if df.empty:
        raise ReportError("no metric values in these records; a baseline needs at least one finished cell")
    agg = aggregate(df)
    entries = []
    for _, r in agg.iterrows():
        cells = df[(df.suite == r.suite) & (df.dataset == r.dataset) & (df.method == r.method)
                   & (df.ref_frac == r.ref_frac) & (df.x_name == r.x_name) & (df.x == r.x) & (df.metric == r.metric)]
        mean, std = _finite(r["mean"]), _finite(r["std"])
        entries.append({
            "suite": r.suite, "dataset": r.dataset, "method": r.method, "ref_frac": float(r.ref_frac),
            **({"sweep": {r.x_name: float(r.x)}} if r.x_name != "ref_frac" else {}),
            "metric": r.metric, "higher_is_better": bool(r.higher_is_better),
            "mean": mean, "std": std, "n": int(r.n), "failed": int(r.failed),
            "tolerance": rule(mean, std) if mean is not None else None,
            "seeds": sorted(int(s) for s in cells.seed.dropna().unique()),
            "profiles": sorted(str(p) for p in cells.profile.dropna().unique()),
            "config_hashes": sorted(str(h) for h in cells.config_hash.dropna().unique()),
        })
    shas = sorted({str((r.get("env") or {}).get("git_sha")) for r in records if (r.get("env") or {}).get("git_sha")})
    return {
        "kind": BASELINE_KIND, "schema_version": BASELINE_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source, "git_shas": shas,
        "profiles": sorted({p for e in entries for p in e["profiles"]}),
        "tolerance_rule": {**asdict(rule), "formula": "max(abs_floor, k * std, rel * |mean|)"},
        "entries": entries,
    }


def write_baseline(baseline: dict[str, Any], path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(baseline, indent=2) + "\n")


def load_baseline(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline {path} does not exist; write one with `tiwbench baseline --from DIR "
                                f"--output {path}`")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"baseline {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND:
        raise ReportError(f"{path} is not a tiwbench baseline (no \"kind\": \"{BASELINE_KIND}\")")
    if doc.get("schema_version") != BASELINE_SCHEMA:
        raise ReportError(f"baseline {path} has schema_version {doc.get('schema_version')}, this tiwbench reads "
                          f"{BASELINE_SCHEMA}; regenerate it with `tiwbench baseline`")
    need = {"suite", "dataset", "method", "ref_frac", "metric", "mean", "std", "n", "tolerance", "higher_is_better"}
    for i, e in enumerate(doc.get("entries", [])):
        missing = need - set(e)
        if missing:
            raise ReportError(f"baseline {path}: entry {i} lacks {', '.join(sorted(missing))}")
    return doc


# -- comparison ---------------------------------------------------------------------------------------
REGRESSION, IMPROVEMENT, OK, FAILED, MISSING, NEW, FIXED = (
    "regression", "improvement", "ok", "failed", "missing", "new", "now ok")
FAILING = {REGRESSION, FAILED, MISSING}


@dataclass
class Row:
    key: Key
    verdict: str
    higher_is_better: bool
    baseline: float | None = None
    fresh: float | None = None
    tolerance: float | None = None
    baseline_n: int = 0
    fresh_n: int = 0
    fresh_failed: int = 0
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.fresh is None:
            return None
        d = self.fresh - self.baseline
        return 0.0 if abs(d) <= 1e-12 * max(1.0, abs(self.baseline)) else d  # float noise of the mean


def judge(base_mean: float, fresh_mean: float, tolerance: float, higher_is_better: bool) -> str:
    """REGRESSION, IMPROVEMENT or OK for one cell, by the metric's direction."""
    worse_by = (base_mean - fresh_mean) if higher_is_better else (fresh_mean - base_mean)
    if worse_by > tolerance:
        return REGRESSION
    if worse_by < -tolerance:
        return IMPROVEMENT
    return OK


def compare(baseline: dict[str, Any], records: list[dict[str, Any]]) -> list[Row]:
    """One row per baseline entry (and per fresh cell the baseline lacks), sorted by key."""
    df = records_frame(records)
    agg = aggregate(df) if not df.empty else pd.DataFrame(columns=["suite"])
    fresh = {_row_key(r): r for _, r in agg.iterrows()}
    hashes = {}
    for _, r in df.iterrows():
        hashes.setdefault(_row_key(r), set()).add(r.config_hash)
    rows = []
    for e in baseline["entries"]:
        k = _entry_key(e)
        hib = direction(e["metric"], e["higher_is_better"])
        row = Row(k, OK, hib, baseline=e["mean"], tolerance=e["tolerance"], baseline_n=e["n"])
        f = fresh.pop(k, None)
        if f is None:
            row.verdict = MISSING
            rows.append(row)
            continue
        row.fresh_n, row.fresh_failed = int(f.n), int(f.failed)
        row.fresh = _finite(f["mean"])
        notes = []
        if e.get("config_hashes") and hashes.get(k) and not hashes[k] <= set(e["config_hashes"]):
            notes.append("config changed")
        if row.fresh_n + row.fresh_failed != e["n"] + e.get("failed", 0):
            notes.append(f"seeds {e['n'] + e.get('failed', 0)}→{row.fresh_n + row.fresh_failed}")
        if e["mean"] is None:  # the baseline itself had no finished seed here
            row.verdict = FIXED if row.fresh is not None else OK
        elif row.fresh is None or row.fresh_failed > e.get("failed", 0):
            row.verdict = FAILED
            notes.insert(0, f"{row.fresh_failed} of {row.fresh_failed + row.fresh_n} seeds failed")
        else:
            row.verdict = judge(e["mean"], row.fresh, e["tolerance"], hib)
        row.note = "; ".join(notes)
        rows.append(row)
    for k, f in fresh.items():
        rows.append(Row(k, NEW, bool(f.higher_is_better), fresh=_finite(f["mean"]), fresh_n=int(f.n),
                        fresh_failed=int(f.failed), note="not in the baseline"))
    return sorted(rows, key=lambda r: r.key)


def failed_check(rows: list[Row], allow_missing: bool = False) -> bool:
    bad = FAILING - ({MISSING} if allow_missing else set())
    return any(r.verdict in bad for r in rows)


def counts(rows: list[Row]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.verdict] = out.get(r.verdict, 0) + 1
    return out


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def render_diff(rows: list[Row], show_ok: bool = False) -> str:
    """A markdown table: key, baseline, fresh, delta, tolerance, verdict (ok rows only with ``show_ok``)."""
    shown = [r for r in rows if show_ok or r.verdict != OK]
    if not shown:
        return ""
    lines = ["| key | dir | baseline | fresh | delta | tolerance | verdict | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in shown:
        verdict = r.verdict.upper() if r.verdict in FAILING else r.verdict
        fresh = "failed" if r.fresh is None and r.fresh_failed else _fmt(r.fresh)
        lines.append(f"| {key_label(r.key)} | {'↑' if r.higher_is_better else '↓'} | {_fmt(r.baseline)} | {fresh} "
                     f"| {_fmt(r.delta, signed=True)} | {_fmt(r.tolerance)} | {verdict} | {r.note} |")
    return "\n".join(lines) + "\n"


def summary_line(rows: list[Row]) -> str:
    c = counts(rows)
    order = [REGRESSION, FAILED, MISSING, IMPROVEMENT, FIXED, NEW, OK]
    return ", ".join(f"{c[v]} {v}" for v in order if c.get(v)) or "nothing compared"


def check(baseline: dict[str, Any], records: list[dict[str, Any]], allow_missing: bool = False,
          show_ok: bool = False) -> tuple[bool, str, list[Row]]:
    """(passed, text to print, rows): the whole check as one pure function."""
    rows = compare(baseline, records)
    passed = not failed_check(rows, allow_missing)
    text = render_diff(rows, show_ok)
    verdict = "PASSED" if passed else "FAILED"
    text += ("\n" if text else "") + f"check {verdict}: {summary_line(rows)}\n"
    if any(r.verdict in (IMPROVEMENT, FIXED) for r in rows):
        text += "improvements beyond tolerance: record them with `tiwbench baseline --from RUNS --output FILE`\n"
    base_profiles = set(baseline.get("profiles") or [])
    fresh_profiles = {r.get("profile") for r in records if r.get("profile")}
    if base_profiles and fresh_profiles and fresh_profiles != base_profiles:
        text += (f"warning: baseline profile(s) {', '.join(sorted(base_profiles))}, fresh run "
                 f"{', '.join(sorted(fresh_profiles))}: the numbers may not be comparable\n")
    return passed, text, rows
