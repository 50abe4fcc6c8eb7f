"""Baseline and check: pure functions on synthetic records, and the CLI's exit codes."""

from __future__ import annotations

import copy
import json

import pytest
from test_report import record, write
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.report.baseline_check import (
    FAILED,
    IMPROVEMENT,
    MISSING,
    NEW,
    OK,
    REGRESSION,
    ToleranceRule,
    check,
    compare,
    judge,
    load_baseline,
    make_baseline,
    write_baseline,
)


def runs():
    """fd (lower is better) and a plugin metric 'acc' (higher is better), two methods, three seeds."""
    out = []
    for m, base in (("a", 0.10), ("b", 0.30)):
        for s, eps in enumerate((-0.01, 0.0, 0.01)):
            r = record(m, 0.1, s, base + eps, bias=0.05)
            r["metrics"].append({"name": "acc", "value": 0.8 + eps, "higher_is_better": True})
            r["config"]["metrics"].append("acc")
            out.append(r)
    return out


def shifted(records, method, metric, delta):
    recs = copy.deepcopy(records)
    for r in recs:
        if r["method"] == method:
            for m in r["metrics"]:
                if m["name"] == metric:
                    m["value"] += delta
    return recs


def verdicts(rows):
    return {(r.key[2], r.key[4]): r.verdict for r in rows}


def test_tolerance_rule():
    rule = ToleranceRule(k=3, rel=0.05, abs_floor=1e-6)
    assert rule(0.1, 0.01) == pytest.approx(0.03)  # k·std
    assert rule(10.0, 0.01) == pytest.approx(0.5)  # rel·|mean|
    assert rule(0.0, float("nan")) == 1e-6  # one seed, zero mean: the floor
    base = make_baseline(runs())
    e = next(e for e in base["entries"] if e["method"] == "a" and e["metric"] == "fd")
    assert e["n"] == 3 and e["mean"] == pytest.approx(0.1) and e["std"] == pytest.approx(0.01)
    assert e["tolerance"] == pytest.approx(0.03) and e["higher_is_better"] is False
    assert e["profiles"] == ["smoke"] and len(e["config_hashes"]) == 3
    assert base["tolerance_rule"]["k"] == 3


def test_judge_by_direction():
    assert judge(0.1, 0.2, 0.05, higher_is_better=False) == REGRESSION
    assert judge(0.1, 0.2, 0.05, higher_is_better=True) == IMPROVEMENT
    assert judge(0.1, 0.12, 0.05, higher_is_better=True) == OK


def test_identical_records_pass(tmp_path):
    recs = runs()
    passed, text, rows = check(make_baseline(recs), recs)
    assert passed and all(r.verdict == OK for r in rows)
    assert "check PASSED" in text


@pytest.mark.parametrize("metric, delta", [("fd", +0.1), ("acc", -0.1)])  # worse: fd up (↓), acc down (↑)
def test_worse_beyond_tolerance_is_regression(metric, delta):
    base = make_baseline(runs())
    passed, text, rows = check(base, shifted(runs(), "a", metric, delta))
    assert not passed
    assert verdicts(rows)[("a", metric)] == REGRESSION and verdicts(rows)[("b", metric)] == OK
    assert "REGRESSION" in text and "check FAILED" in text


@pytest.mark.parametrize("metric, delta", [("fd", -0.05), ("acc", +0.05)])
def test_better_beyond_tolerance_is_improvement(metric, delta):
    passed, text, rows = check(make_baseline(runs()), shifted(runs(), "a", metric, delta))
    assert passed and verdicts(rows)[("a", metric)] == IMPROVEMENT
    assert "improvement" in text and "tiwbench baseline" in text


def test_within_tolerance_passes():
    passed, _, rows = check(make_baseline(runs()), shifted(runs(), "a", "fd", 0.02))  # tolerance 0.03
    assert passed and verdicts(rows)[("a", "fd")] == OK


def test_failed_and_missing_cells():
    base = make_baseline(runs())
    recs = [r for r in runs() if not (r["method"] == "b" and r["seed"] == 2)]
    recs.append(record("b", 0.1, 2, status="failed"))
    recs[-1]["config"]["metrics"].append("acc")
    passed, text, rows = check(base, recs)
    assert not passed and verdicts(rows)[("b", "fd")] == FAILED and verdicts(rows)[("b", "acc")] == FAILED
    assert "1 of 3 seeds failed" in text
    recs = [r for r in runs() if r["method"] == "a"]
    passed, _, rows = check(base, recs)
    assert not passed and verdicts(rows)[("b", "fd")] == MISSING
    assert check(base, recs, allow_missing=True)[0]
    recs = runs() + [record("c", 0.1, 0, 0.2)]
    passed, _, rows = check(base, recs)
    assert passed and verdicts(rows)[("c", "fd")] == NEW


def test_config_change_is_noted():
    recs = copy.deepcopy(runs())
    for r in recs:
        r["config_hash"] += "-changed"
    rows = compare(make_baseline(runs()), recs)
    assert all("config changed" in r.note for r in rows)


def test_baseline_file_roundtrip_and_validation(tmp_path):
    p = tmp_path / "base.json"
    write_baseline(make_baseline(runs()), p)
    assert load_baseline(p)["entries"]
    (tmp_path / "bad.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(ValueError, match="not a tiwbench baseline"):
        load_baseline(tmp_path / "bad.json")


def test_cli_baseline_and_check(tmp_path):
    cli = CliRunner()
    base_runs = write(tmp_path / "base", runs())
    base = tmp_path / "baseline.json"
    res = cli.invoke(app, ["baseline", "--from", str(base_runs), "--output", str(base)])
    assert res.exit_code == 0, res.output
    doc = json.loads(base.read_text())
    assert doc["kind"] == "tiwbench.baseline" and len(doc["entries"]) == 6  # 2 methods × (fd, bias, acc)

    res = cli.invoke(app, ["check", "--baseline", str(base), "--runs", str(base_runs)])
    assert res.exit_code == 0 and "check PASSED" in res.output

    for metric, delta in (("fd", +0.1), ("acc", -0.1)):
        worse = write(tmp_path / f"worse_{metric}", shifted(runs(), "b", metric, delta))
        res = cli.invoke(app, ["check", "--baseline", str(base), "--runs", str(worse)])
        assert res.exit_code == 1, res.output
        assert f"| unit/toy2d/b/ref0.1/{metric} |" in res.output and "REGRESSION" in res.output

    better = write(tmp_path / "better", shifted(runs(), "b", "fd", -0.1))
    res = cli.invoke(app, ["check", "--baseline", str(base), "--runs", str(better)])
    assert res.exit_code == 0 and "improvement" in res.output

    failed = write(tmp_path / "failed", runs() + [record("a", 0.1, 0, status="failed")])  # overwrites seed 0
    res = cli.invoke(app, ["check", "--baseline", str(base), "--runs", str(failed)])
    assert res.exit_code == 1 and "FAILED" in res.output

    res = cli.invoke(app, ["check", "--baseline", str(tmp_path / "none.json"), "--runs", str(base_runs)])
    assert res.exit_code == 2 and "tiwbench baseline" in res.output
