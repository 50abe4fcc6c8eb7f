"""The command line: listing, one-line errors that name the fix, an end-to-end smoke run."""

import json

from typer.testing import CliRunner

from tiwbench.cli import app

runner = CliRunner()


def _err_line(result):
    text = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    return text.splitlines()


def test_ls_methods_lists_nineteen_nine_from_entry_points_each_with_its_family():
    r = runner.invoke(app, ["ls", "methods"])
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 19  # 10 score-network methods, 6 GAN, 3 VAE
    assert sum("entry point" in line for line in lines) == 9
    assert any(line.startswith("tiw_dsm (score) ") and "builtin" in line for line in lines)
    assert any(line.startswith("tiw_gan (gan) ") for line in lines)
    assert any(line.startswith("iw_vae (vae) ") for line in lines)
    r = runner.invoke(app, ["ls", "families"])
    assert r.exit_code == 0 and [line.split()[0] for line in r.output.strip().splitlines()] == ["gan", "score", "vae"]
    r = runner.invoke(app, ["ls", "kernels"])
    assert any(line.startswith("rf ") for line in r.output.splitlines())
    release = next(line for line in lines if line.startswith("tiw_dsm_release "))
    assert "replica of the released code" in release and "not recommended" in release


def test_ls_metrics_shows_direction():
    r = runner.invoke(app, ["ls", "metrics"])
    assert r.exit_code == 0 and any(line.startswith("fd ↓") for line in r.output.splitlines())


def test_misspelled_method_is_one_line_error(tmp_path):
    r = runner.invoke(app, ["run", "--suite", "smoke", "--methods", "tiw_dsn", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = _err_line(r)
    assert len(lines) == 1 and "unknown method 'tiw_dsn'" in lines[0] and "Did you mean 'tiw_dsm'" in lines[0]
    assert not (tmp_path / "o").exists()


def test_unknown_suite_key_is_one_line_error(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: bad\ndatasets: [toy2d]\nmethods: [tiw_dsm]\nref_fracs: [0.1]\nseeds: [0]\nmetric: [fd]\n")
    r = runner.invoke(app, ["run", "--suite", str(suite), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = _err_line(r)
    assert len(lines) == 1 and "'metric'" in lines[0] and str(suite) in lines[0] and "metrics" in lines[0]


def test_run_report_show_end_to_end(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--suite", "smoke", "--methods", "dsm_obs,tiw_dsm", "--ref-fracs", "0.25", "--out", str(out)]
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "name: tiny\ndatasets: [toy2d]\nmethods: [dsm_obs, tiw_dsm]\nref_fracs: [0.25]\nseeds: [0]\n"
        "profiles:\n  default:\n    toy2d:\n      train: {steps: 60, hidden: 32}\n"
        "      ratio: {steps: 60, hidden: 32}\n"
        "      sample: {n: 300, steps: 6}\n")
    args[2] = str(suite)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "toy2d · bias ↓" in r.output and "| tiw_dsm |" in r.output
    recs = sorted(out.rglob("record.json"))
    assert len(recs) == 2
    rec = json.loads(recs[0].read_text())
    for key in ("schema_version", "suite", "dataset", "method", "ref_frac", "ref_size", "seed", "metrics",
                "config", "env", "timing", "config_hash"):
        assert key in rec
    assert rec["ref_size"] == 500
    # the suite's metrics, and the reference levels that every record on an exact mixture carries
    assert {m["name"] for m in rec["metrics"]} == {"fd", "bias", "bias_ref_level", "bias_ref", "fd_ref_level"}
    assert rec["env"]["packages"]["torch"].startswith("2.13")
    # running again skips both cells: nothing is recomputed
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0 and "0 cells run, 2 already recorded" in r2.output
    r3 = runner.invoke(app, ["show", str(recs[0])])
    assert r3.exit_code == 0 and "fd" in r3.output
