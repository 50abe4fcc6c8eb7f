"""Each bad input: a one-line error naming the problem and the fix, non-zero exit, no file written."""

import hashlib

import pytest
from typer.testing import CliRunner

from tiwbench.cli import app

GOOD = "name: g\ndatasets: [toy2d]\nmethods: [dsm_obs]\nref_fracs: [0.1]\nseeds: [0]\n"


def snapshot(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _suite(tmp_path, text):
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return str(p)


def _corrupt_cifar(tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    (d / "cifar-10-python.tar.gz").write_bytes(b"this is not a gzip file")
    return ["--dataset", "cifar10_lt", "--data-root", str(d), "--suite", _suite(tmp_path, GOOD.replace(
        "[toy2d]", "[cifar10_lt]"))]


CASES = {
    "missing data path": (lambda t: ["--suite", _suite(t, GOOD.replace("[toy2d]", "[cifar10_lt]")),
                                     "--data-root", str(t / "nowhere")],
                          ["cifar-10", "cifar.html"]),
    "corrupt data file": (_corrupt_cifar, ["cifar-10-python.tar.gz", "download"]),
    "unknown suite": (lambda t: ["--suite", "ref_sise"], ["unknown suite 'ref_sise'", "Did you mean 'ref_size'"]),
    "unknown method": (lambda t: ["--suite", _suite(t, GOOD), "--methods", "tiw"], ["unknown method 'tiw'"]),
    "unknown dataset": (lambda t: ["--suite", _suite(t, GOOD.replace("[toy2d]", "[toy3d]"))],
                        ["unknown dataset 'toy3d'", "Did you mean 'toy2d'"]),
    "unknown metric": (lambda t: ["--suite", _suite(t, GOOD + "metrics: [fdd]\n")],
                       ["unknown metric 'fdd'", "Did you mean 'fd'"]),
    "unknown suite key": (lambda t: ["--suite", _suite(t, GOOD + "method_option: {}\n")],
                          ["unknown key 'method_option'", "did you mean 'method_options'"]),
    "ill-typed suite key": (lambda t: ["--suite", _suite(t, GOOD.replace("seeds: [0]", "seeds: zero"))],
                            ["seeds: expected a list"]),
    "ref_frac not drawable": (lambda t: ["--suite", _suite(t, GOOD.replace("[toy2d]", "[digits_lt]")
                                                            .replace("[0.1]", "[1.0]"))],
                              ["ref_frac", "disjoint"]),
    "unknown method option": (lambda t: ["--suite", _suite(t, GOOD.replace("[dsm_obs]", "[iw_dsm]")
                                                            + "method_options: {iw_dsm: {alfa: 0.5}}\n")],
                              ["method_options.iw_dsm", "'alfa'", "allowed: ['alpha']"]),
    "ill-typed method option": (lambda t: ["--suite", _suite(t, GOOD.replace("[dsm_obs]", "[iw_dsm]")
                                                              + "method_options: {iw_dsm: {alpha: half}}\n")],
                                ["'alpha'", "must be float"]),
    "ill-typed dataset parameter": (lambda t: ["--suite", _suite(t, GOOD), "--data-param", "rho=abc"],
                                    ["'rho'", "must be float"]),
    "out-of-range budget": (lambda t: ["--suite", _suite(t, GOOD + "profiles: {default: {toy2d: "
                                                            "{sample: {steps: 1}}}}\n")],
                            ["sample.steps = 1 must be at least 2"]),
    "unknown ratio estimator": (lambda t: ["--suite", _suite(t, GOOD), "--ratio", "discrimnator"],
                                ["unknown ratio 'discrimnator'", "Did you mean 'discriminator'", "ls ratios"]),
    "unknown ratio in a suite": (lambda t: ["--suite", _suite(t, GOOD + "ratio: exakt\n")],
                                 ["unknown ratio 'exakt'", "Did you mean 'exact'"]),
    "ratio for a ratio-free method": (lambda t: ["--suite", _suite(t, GOOD.replace("[dsm_obs]", "[dsm_obs@exact]"))],
                                      ["uses no density ratio", "drop '@exact'"]),
    "unknown per-method ratio": (lambda t: ["--suite", _suite(t, GOOD.replace("[dsm_obs]", "[tiw_dsm@denoiser]"))],
                                 ["unknown ratio 'denoiser'", "Did you mean 'denoiser_diff'"]),
    "exact ratio without a closed form": (lambda t: ["--suite", _suite(t, GOOD.replace("[toy2d]", "[digits_lt]")
                                                                       .replace("[dsm_obs]", "[tiw_dsm@exact]"))],
                                          ["no exact density ratio"]),
    "cuda without a GPU": (lambda t: ["--suite", _suite(t, GOOD), "--device", "cuda"], ["--device cpu"]),
    "out not writable": (lambda t: ["--suite", _suite(t, GOOD), "--out", str(t / "afile" / "runs")],
                         ["not writable"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly(case, tmp_path):
    args_of, needles = CASES[case]
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "runs"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier result")
    args = args_of(tmp_path)
    if "--out" not in args:
        args += ["--out", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    before = snapshot(tmp_path)
    r = CliRunner().invoke(app, ["run", *args])
    err = r.stderr if hasattr(r, "stderr") else r.output
    lines = [line for line in err.strip().splitlines() if line]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(tmp_path) == before
