"""The ratio diagnostics against two targets: the truth (true proportions) and the best ratio D_ref allows
(the truth re-weighted to D_ref's empirical proportions). Planted offsets give the errors in closed form;
a perfect estimator of the attainable ratio (``exact_empirical``'s model) scores zero against it."""

import math

import pytest
import torch

from tiwbench.config import RatioConfig
from tiwbench.data.mixtures import Toy2D
from tiwbench.ratios.diagnostics import ratio_diagnostics
from tiwbench.registry import RATIOS
from tiwbench.sweep.runner import attainable_ratio


class Offset:
    """The exact ratio with a planted offset: log w + c, and a correction σ²∇log w + b (b a fixed vector)."""

    def __init__(self, exact, c: float, b: tuple[float, float], time_dependent: bool = True):
        self.exact, self.c, self.b = exact, c, torch.tensor(b, dtype=torch.float64)
        self.time_dependent, self.logit_max = time_dependent, math.log(1e5)

    def logit(self, x, sigma):
        return self.exact.logit(x.double(), sigma.double()) + self.c

    def log_ratio_and_grad(self, x, sigma):
        log_w, g = self.exact.log_ratio_and_grad(x.double(), sigma.double())
        return log_w + self.c, g + self.b / sigma.double().reshape(-1, 1) ** 2


@pytest.fixture(scope="module")
def toy():
    ds = Toy2D(n_bias=1000)
    return ds, ds.split(0.05, 0)  # 50 reference points: proportions far from uniform


def test_planted_offsets_give_both_errors_and_the_gap(toy):
    """Model: truth + (c_m, b_m); attainable stand-in: truth + (c_a, b_a). Against the truth the errors are
    c_m² and ‖b_m‖²; against the attainable target (c_m − c_a)² and ‖b_m − b_a‖²; its gap c_a² and ‖b_a‖²."""
    ds, split = toy
    exact = ds.exact_ratio(True)
    model, target = Offset(exact, 0.3, (0.2, -0.1)), Offset(exact, -0.5, (0.05, 0.4))
    rows = ratio_diagnostics(model, split.bias, split.ref, torch.Generator().manual_seed(0), exact=exact, n=400,
                             attainable=target)
    assert len(rows) == 5
    for r in rows:
        assert r["log_ratio_mse"] == pytest.approx(0.3**2, rel=1e-5)
        assert r["log_ratio_mse_att"] == pytest.approx(0.8**2, rel=1e-5)
        assert r["log_ratio_gap"] == pytest.approx(0.5**2, rel=1e-5)
        assert r["shift_mse"] == pytest.approx(0.2**2 + 0.1**2, rel=1e-6)
        assert r["shift_mse_att"] == pytest.approx(0.15**2 + 0.5**2, rel=1e-6)
        assert r["shift_gap"] == pytest.approx(0.05**2 + 0.4**2, rel=1e-6)
        # w: (e^{c} − 1)² times the mean of w² against the truth, the same mean squared ratio for each target
        ratio = r["ratio_mse"] / (math.exp(0.3) - 1) ** 2
        assert r["ratio_mse_att"] == pytest.approx(ratio * math.exp(-0.5 * 2) * (math.exp(0.8) - 1) ** 2, rel=1e-5)
        assert r["ratio_gap"] == pytest.approx(ratio * (math.exp(-0.5) - 1) ** 2, rel=1e-5)
        # the signals stay the truth's: the same numbers as without a second target
    plain = ratio_diagnostics(model, split.bias, split.ref, torch.Generator().manual_seed(0), exact=exact, n=400)
    for r, p in zip(rows, plain, strict=True):
        assert {k: v for k, v in r.items() if not k.endswith(("_att", "_gap"))} == p


@pytest.mark.parametrize("time_dependent", [True, False])
def test_a_perfect_estimator_of_the_attainable_ratio_scores_zero_against_it(toy, time_dependent):
    """exact_empirical's model, diagnosed as if learned: zero against the attainable target; against the
    truth exactly the gap, and that gap is not zero where D_ref's proportions differ from the truth's."""
    ds, split = toy
    est = RATIOS.get("exact_empirical")(ds, RatioConfig(), time_dependent)
    est.split = split
    model, _ = est.fit(split.bias, split.ref, torch.Generator().manual_seed(0))
    exact, target = ds.exact_ratio(time_dependent), attainable_ratio(ds, split, time_dependent)
    rows = ratio_diagnostics(model, split.bias, split.ref, torch.Generator().manual_seed(1), exact=exact, n=500,
                             attainable=target)
    keys = ["log_ratio", "ratio"] + (["shift"] if time_dependent else [])
    for r in rows:
        for k in keys:
            assert r[f"{k}_mse_att"] == pytest.approx(0.0, abs=1e-12)  # the logit passes through float32
            assert r[f"{k}_mse"] == pytest.approx(r[f"{k}_gap"], rel=1e-5)
    assert rows[0]["log_ratio_gap"] > 1e-3  # D_ref's 50 labels are not the true proportions
    # and the truth scores exactly the gap against the attainable target, zero against itself
    truth = ratio_diagnostics(exact, split.bias, split.ref, torch.Generator().manual_seed(1), exact=exact, n=500,
                              attainable=target)
    for r in truth:
        assert r["log_ratio_mse"] < 1e-12 and r["log_ratio_mse_att"] == pytest.approx(r["log_ratio_gap"], rel=1e-5)
