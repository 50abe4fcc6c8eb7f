"""Each bad input: a one-line error naming the problem and the fix, non-zero exit, no file written.
Each damaged cache or checkpoint: a one-line warning, the file moved aside and rebuilt, the run completes."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
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


# -- damaged files: detected on load, reported in one line, moved aside, rebuilt; the run goes on ----

def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p):
    """One byte changed in the middle of the file (bit rot): the file still opens."""
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _garbage(p):
    p.write_text("{ not json")


def _checkpoint_case(damage):
    def run(tmp_path, capsys):
        from tiwbench.config import load_suite
        from tiwbench.records import load_records
        from tiwbench.sweep.runner import checkpoint_path, expand
        from tiwbench.training.loop import save_checkpoint

        suite = _suite(tmp_path, GOOD + "profiles: {default: {toy2d: {train: {steps: 30, hidden: 16}, "
                                        "ratio: {steps: 10}, sample: {n: 64, steps: 4}}}}\n")
        (cell,) = expand(load_suite(suite))
        out = tmp_path / "runs"
        ck = checkpoint_path(out / "g/toy2d/dsm_obs/ref0.1_seed0", cell)
        net = torch.nn.Linear(2, 2)
        opt = torch.optim.Adam(net.parameters())
        save_checkpoint(ck, 10, net, net, opt, torch.Generator(), torch.zeros(30))  # a real one, then damaged
        damage(ck)
        r = CliRunner().invoke(app, ["run", "--suite", suite, "--out", str(out), "--no-report"])
        assert r.exit_code == 0, r.output
        (rec,) = load_records(out)
        assert rec["status"] == "ok" and rec["train"]["resumed_from_step"] == 0  # retrained from the start
        return ck, (r.stderr if hasattr(r, "stderr") else r.output)
    return run


def _tiny_image_dataset():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1, torch.arange(64) % 2
    return SimpleNamespace(name="tiny", num_classes=2, target_data=lambda: (x, y),
                           target_proportions=torch.tensor([0.5, 0.5]),
                           evaluator_config={"width": 4, "epochs": 1, "batch_size": 32, "lr": 1e-3,
                                             "weight_decay": 0.0, "holdout": 0.25})


def _evaluator_case(damage, which):
    def run(tmp_path, capsys):
        from tiwbench.data.evaluator import ImageEvaluator

        ds = _tiny_image_dataset()
        first = ImageEvaluator.for_dataset(ds, cache_dir=tmp_path)
        (pt,) = (tmp_path / "evaluators").glob("*.pt")
        damage(pt if which == "weights" else pt.with_name(pt.name + ".json"))
        again = ImageEvaluator.for_dataset(ds, cache_dir=tmp_path)
        assert not again.loaded_from_cache and again.info["checkpoint_hash"] == first.info["checkpoint_hash"]
        assert ImageEvaluator.for_dataset(ds, cache_dir=tmp_path).loaded_from_cache  # the rebuilt cache is used
        assert len(list((tmp_path / "evaluators").glob("*.corrupt-*"))) == 2  # weights and sidecar, together
        return pt, capsys.readouterr().err
    return run


def _reference_case(damage):
    def run(tmp_path, capsys):
        from types import SimpleNamespace

        from tiwbench.data.evaluator import EvalCNN
        from tiwbench.metrics import fidelity

        torch.manual_seed(0)
        target = torch.rand(40, 1, 8, 8) * 2 - 1
        net = EvalCNN(1, 8, 2, 4).eval()
        space = fidelity.evaluator_space(SimpleNamespace(network=net, feature_dim=net.feature_dim, target=target))
        first = fidelity.reference_features(target, space, "torch-fidelity", tmp_path)
        path = Path(first["path"])
        damage(path)
        again = fidelity.reference_features(target, space, "torch-fidelity", tmp_path)
        assert again["status"] == "miss"
        np.testing.assert_array_equal(again["mu"], first["mu"])
        assert fidelity.reference_features(target, space, "torch-fidelity", tmp_path)["status"] == "hit"
        return path, capsys.readouterr().err
    return run


DAMAGED = {
    "truncated training checkpoint": (_checkpoint_case(_truncate), "training checkpoint"),
    "bit-flipped training checkpoint": (_checkpoint_case(_flip), "training checkpoint"),
    "truncated evaluator cache": (_evaluator_case(_truncate, "weights"), "evaluator cache"),
    "bit-flipped evaluator cache": (_evaluator_case(_flip, "weights"), "evaluator cache"),
    "evaluator sidecar not JSON": (_evaluator_case(_garbage, "sidecar"), "evaluator cache"),
    "truncated reference statistics": (_reference_case(_truncate), "reference statistics"),
    "bit-flipped reference statistics": (_reference_case(_flip), "reference statistics"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_file_is_moved_aside_and_rebuilt(case, tmp_path, capsys):
    run, what = DAMAGED[case]
    path, err = run(tmp_path, capsys)
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"warning: damaged {what} {path} ("), err
    assert "moved to" in lines[0] and "rebuilding" in lines[0]
    assert len(list(path.parent.glob(path.name + ".corrupt-*"))) == 1  # kept for inspection, never read again
