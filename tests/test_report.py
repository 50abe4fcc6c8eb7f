"""Report statistics, marking and formats, on synthetic records written to tmp_path."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from tiwbench.cli import app
from tiwbench.records import atomic_write_json, cell_dir
from tiwbench.report.intervals import ci_halfwidth
from tiwbench.report.leaderboard import aggregate, records_frame, to_markdown
from tiwbench.report.render import render


def record(method, ref_frac, seed, fd=None, bias=None, *, status="ok", dataset="toy2d", suite="unit"):
    rec = {"schema_version": 1, "status": status, "suite": suite, "dataset": dataset, "method": method,
           "ref_frac": ref_frac, "ref_size": int(1000 * ref_frac), "seed": seed, "profile": "smoke",
           "config_hash": f"h-{method}-{ref_frac}-{seed}", "config": {"metrics": ["fd", "bias"]},
           "env": {"git_sha": "abc"}, "timing": {}, "error": None}
    if status == "ok":
        rec["metrics"] = [{"name": "fd", "value": fd, "higher_is_better": False},
                          {"name": "bias", "value": bias if bias is not None else fd, "higher_is_better": False}]
    else:
        rec["error"] = {"type": "NonFiniteLoss", "message": "loss is nan"}
    return rec


def write(tmp_path, records):
    for r in records:
        atomic_write_json(cell_dir(tmp_path, r["suite"], r["dataset"], r["method"], r["ref_frac"], r["seed"])
                          / "record.json", r)
    return tmp_path


def cells(agg, metric="fd"):
    return {(r.method, r.ref_frac): r for _, r in agg[agg.metric == metric].iterrows()}


# clear best at 0.05 (a far below b, tight); tie at 0.25 (a and b differ by seed noise, b better on seed 1
# and 2, worse on 0), c far behind on every seed, its seed noise shared with a's (about 5× a on each seed)
VALUES = {("a", 0.05): [0.10, 0.11, 0.12], ("b", 0.05): [0.50, 0.51, 0.52], ("c", 0.05): [0.90, 0.91, 0.92],
          ("a", 0.25): [0.10, 0.20, 0.30], ("b", 0.25): [0.35, 0.15, 0.25], ("c", 0.25): [0.50, 1.00, 1.40]}


@pytest.fixture
def synthetic():
    return [record(m, f, s, v) for (m, f), vals in VALUES.items() for s, v in enumerate(vals)]


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_ci_halfwidth_matches_student_t(n):
    vals = [0.1 * i ** 1.5 for i in range(n)]
    s = pd.Series(vals).std(ddof=1)
    lo, hi = stats.t.interval(0.95, n - 1, loc=sum(vals) / n, scale=stats.sem(vals))
    assert ci_halfwidth(s, n) == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert ci_halfwidth(s, n) == pytest.approx(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n), rel=1e-12)


def test_one_seed_has_no_interval():
    assert math.isnan(ci_halfwidth(0.3, 1))
    agg = aggregate(records_frame([record("a", 0.05, 0, 0.1), record("b", 0.05, 0, 0.5)]))
    assert agg.ci_half.isna().all()
    md = to_markdown(agg)
    assert "n=1, no CI" in md
    assert "**" not in md.split("\n", 2)[2]  # one seed each: no clear best, both tied
    assert md.count("≈") >= 2


def test_aggregate_mean_std_n(synthetic):
    c = cells(aggregate(records_frame(synthetic)))
    r = c[("a", 0.25)]
    assert r.n == 3 and r["mean"] == pytest.approx(0.2) and r["std"] == pytest.approx(0.1)
    assert r.ci_low == pytest.approx(0.2 - stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))


def test_clear_best_and_tie(synthetic):
    agg = aggregate(records_frame(synthetic))
    c = cells(agg)
    assert c[("a", 0.05)].mark == "best"  # lower fd is better, interval clear of b's
    assert c[("b", 0.05)].mark == "" and c[("c", 0.05)].mark == ""
    assert c[("a", 0.25)].mark == "tie" and c[("b", 0.25)].mark == "tie"
    assert c[("c", 0.25)].mark == ""
    md = to_markdown(agg)
    assert "**0.110 ± 0.010** [0.085, 0.135] n=3" in md
    assert "≈ 0.20 ± 0.10" in md and "≈ 0.25 ± 0.10" in md


def test_direction_from_registry_not_records(synthetic):
    # records claiming higher-is-better for fd must not flip the registered direction
    for r in synthetic:
        for m in r["metrics"]:
            m["higher_is_better"] = True
    assert cells(aggregate(records_frame(synthetic)))[("a", 0.05)].mark == "best"


def test_unregistered_metric_uses_records_direction():
    recs = []
    for m, vals in {"a": [0.9, 0.91, 0.92], "b": [0.1, 0.11, 0.12]}.items():
        for s, v in enumerate(vals):
            r = record(m, 0.1, s, 0.5)
            r["metrics"].append({"name": "plugin_acc", "value": v, "higher_is_better": True})
            recs.append(r)
    c = cells(aggregate(records_frame(recs)), "plugin_acc")
    assert c[("a", 0.1)].mark == "best" and bool(c[("a", 0.1)].higher_is_better)
    assert "plugin_acc ↑" in to_markdown(aggregate(records_frame(recs)))


def test_failed_cells_shown_as_failed(synthetic):
    recs = synthetic + [record("d", 0.05, s, status="failed") for s in range(3)]
    recs += [record("d", 0.25, 0, 0.5), record("d", 0.25, 1, 0.6), record("d", 0.25, 2, status="failed")]
    agg = aggregate(records_frame(recs))
    c = cells(agg)
    assert c[("d", 0.05)].n == 0 and c[("d", 0.05)].failed == 3
    assert c[("d", 0.25)].n == 2 and c[("d", 0.25)].failed == 1
    md = to_markdown(agg)
    row = next(line for line in md.splitlines() if line.startswith("| d |") and "fd" not in line)
    assert row.split("|")[2].strip() == "**failed** (3/3 seeds)"  # not blank, not zero
    assert row.split("|")[3].strip().endswith("n=2, 1 failed")
    for metric in ("fd", "bias"):  # a failed record counts against each metric it was meant to produce
        assert cells(agg, metric)[("d", 0.05)].failed == 3
    data = json.loads(render(agg, "json"))
    d = [x for x in data["cells"] if x["method"] == "d" and x["ref_frac"] == 0.05 and x["metric"] == "fd"][0]
    assert d["n"] == 0 and d["failed"] == 3 and d["mean"] is None


def test_formats_parse(synthetic, tmp_path):
    recs = synthetic + [record("d", 0.05, 0, status="failed")]
    agg = aggregate(records_frame(recs))
    df = pd.read_csv(io.StringIO(render(agg, "csv")))
    assert {"method", "ref_frac", "metric", "mean", "std", "ci_low", "ci_high", "n", "failed", "mark"} <= set(df)
    assert len(df) == len(agg)
    assert df.loc[(df.method == "a") & (df.ref_frac == 0.05) & (df.metric == "fd"), "mark"].item() == "best"
    data = json.loads(render(agg, "json"))
    assert data["confidence"] == 0.95 and len(data["cells"]) == len(agg)
    tex = render(agg, "latex")
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    assert r"\textbf{" in tex and r"$\approx$" in tex and r"\textit{failed}" in tex
    page = render(agg, "html")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('against ref_frac" src="data:image/png;base64,') == 2  # each table beside its figure
    assert 'class="best"' in page and 'class="failed"' in page


def test_cli_report_output_and_plot(synthetic, tmp_path):
    runs = write(tmp_path / "runs", synthetic)
    runner = CliRunner()
    out = tmp_path / "rep.md"
    png = tmp_path / "fig.png"
    res = runner.invoke(app, ["report", "--runs", str(runs), "--output", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "### toy2d · fd ↓" in out.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["report", "--runs", str(runs), "--format", "csv"])
    assert res.exit_code == 0 and len(pd.read_csv(io.StringIO(res.stdout))) == 12
    res = runner.invoke(app, ["report", "--runs", str(runs), "--format", "xml"])
    assert res.exit_code == 2 and "unknown format" in res.output
    res = runner.invoke(app, ["report", "--runs", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "error:" in res.output


def test_non_finite_value_counts_as_failed():
    recs = [record("a", 0.1, s, 0.1 + 0.01 * s) for s in range(3)]
    recs[2]["metrics"][0]["value"] = float("nan")
    r = cells(aggregate(records_frame(recs)))[("a", 0.1)]
    assert r.n == 2 and r.failed == 1 and r["mean"] == pytest.approx(0.105)


@pytest.mark.parametrize("n_methods", [3, 10])
def test_plot_legend_overlaps_no_axis_label(n_methods):
    import matplotlib

    matplotlib.use("Agg")
    from tiwbench.report.plots import figure

    recs = [record(f"method_{i}", f, s, 0.1 * i + s * 0.01) for i in range(n_methods) for f in (0.05, 0.25)
            for s in range(2)]
    fig = figure(aggregate(records_frame(recs)))
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_visible():
            # the axes with its tick labels and x-label: nothing of it may sit inside the legend's box
            assert ax.get_tightbbox(renderer).y0 > legend.y1, (ax.get_tightbbox(renderer), legend)


def test_sample_grids_are_shown_at_their_own_size(tmp_path):
    from tiwbench.report.html import GALLERY_STYLE, gallery_html

    png = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (265).to_bytes(4, "big") + (265).to_bytes(4, "big")
           + b"\x08\x02\x00\x00\x00")
    (tmp_path / "samples.png").write_bytes(png)
    rec = {**record("a", 0.05, 0, 0.1), "pictures": {"samples": "samples.png"}, "_path": str(tmp_path / "record.json")}
    page = gallery_html([rec])
    assert 'width="265" height="265"' in page
    assert "width:" not in GALLERY_STYLE.split(".gallery img", 1)[1].split("}", 1)[0]  # no CSS rescaling


def test_a_diagnostic_metric_is_shown_but_never_ranked():
    """bias_ref (bias against D_ref's own proportions) gets no best/tie mark where bias, with the same
    separated values, gets one."""
    recs = []
    for s, (a, b) in enumerate([(0.01, 0.5), (0.012, 0.52), (0.011, 0.49)]):
        for m, v in (("a", a), ("b", b)):
            r = record(m, 0.05, s, fd=v, bias=v)
            r["metrics"].append({"name": "bias_ref", "value": v, "higher_is_better": False})
            recs.append(r)
    agg = aggregate(records_frame(recs))
    assert cells(agg, "bias")[("a", 0.05)].mark == "best"
    assert {r.mark for r in cells(agg, "bias_ref").values()} == {""}
    assert len(cells(agg, "bias_ref")) == 2  # still in the table
