"""`fitted_family`, the ceiling fitted from D_ref against D_bias (ratios/fitted.py): its push-through of the
family's parameters against `exact`, its convergence to the true tilt, its record, and whole runs."""

import json
import math

import pytest
import torch

from tiwbench.config import RatioConfig
from tiwbench.data.gmm import GMM, GMMTilt
from tiwbench.data.mixtures import Toy2D
from tiwbench.ratios import fitted
from tiwbench.registry import RATIOS

SIGMAS = (0.0, 0.05, 0.5, 3.0)


def _fit(ds, split, seed=0):
    est = RATIOS.get("fitted_family")(ds, RatioConfig(), True)
    return est.fit(split.bias, split.ref, torch.Generator().manual_seed(seed))


def _true_coefficients(ds) -> torch.Tensor:
    """The regression's coefficients the truth implies, written independently of family_parameters:
    a_k = log(π_k/β_k) + bᵀμ_k + bᵀΣ_k b/2 from the dense Σ_k, and −b on x."""
    t = ds.family_truth()
    a = t["data_weights"].log() - t["bias_weights"].log()
    if t["tilt"] is None:
        return a
    b, comps = t["tilt"], ds.family_components()
    cov = comps.component_cov()
    a = a + comps.means @ b + 0.5 * torch.einsum("d,kde,e->k", b, cov, b)
    return torch.cat([a, -b])


@pytest.mark.parametrize("ds", [GMMTilt(dim=6, rank=2, modes=4), GMM(dim=6, rank=2, modes=4, tilt=0.7, rho=0.1),
                                Toy2D()], ids=["gmm_tilt", "gmm_both", "toy2d"])
def test_true_parameters_give_the_exact_ratio(ds):
    """family_ratio with the true (π, β, b) is `exact` at every σ, value and gradient, time-dependent and
    clean; and the coefficients the truth implies convert back to the true b and log(π_k/β_k)."""
    t = ds.family_truth()
    x = ds.bias_mixture.sample(200, torch.Generator().manual_seed(1))[0]
    for td in (True, False):
        exact, mine = ds.exact_ratio(td), ds.family_ratio(t["data_weights"], t["bias_weights"], t["tilt"], td)
        for s in SIGMAS:
            for want, got in zip(exact.log_ratio_and_grad(x, s), mine.log_ratio_and_grad(x, s)):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    big = ds.bias_mixture.sample(20000, torch.Generator().manual_seed(2))[0]
    pi, beta, b = fitted.family_parameters(ds, _true_coefficients(ds), big)
    if t["tilt"] is not None:
        torch.testing.assert_close(b, t["tilt"], rtol=0, atol=1e-12)
    # log(π_k/β_k) up to the constant that renormalises π over the drawn β̂
    got, want = pi.log() - beta.log(), t["data_weights"].log() - t["bias_weights"].log()
    torch.testing.assert_close(got - got.mean(), want - want.mean(), rtol=0, atol=1e-9)
    torch.testing.assert_close(beta, t["bias_weights"], rtol=0, atol=0.02)  # EM on 20,000 draws of D_bias


def test_fitted_tilt_converges_as_one_over_sqrt_n():
    """gmm_tilt with |D_ref| = |D_bias| = n: the mean error ‖b̂ − βu‖ over 3 seeds falls by about 4 from
    n = 1,000 to 16,000 (1/sqrt(n)), the held-out penalty included."""
    errors = {}
    for n in (1000, 16000):
        ds = GMMTilt(n_bias=n, n_oracle=10)
        errors[n] = sum(_fit(ds, ds.split(1.0, seed), seed)[1]["error"]["tilt"] for seed in range(3)) / 3
    ratio = errors[1000] / errors[16000]
    assert 2.5 < ratio < 6.5, errors
    assert errors[16000] < 0.3, errors  # of ‖βu‖ = 1


def test_the_record_reports_the_error_at_100_references():
    """At 1 % of gmm_tilt (100 references) the fit's parameters and their error against the truth are in its
    info (the record's ratio section), whatever they are."""
    ds = GMMTilt()
    split = ds.split(0.01, 0)
    assert len(split.ref) == 100
    model, info = _fit(ds, split)
    assert len(info["fitted"]["tilt"]) == 16 and len(info["fitted"]["data_weights"]) == 8
    err = info["error"]
    assert err["tilt_norm"] == pytest.approx(1.0)
    for key in ("tilt", "mean_shift", "mean_shift_truth", "log_weight_ratio_rms", "data_weights_tv"):
        assert math.isfinite(err[key]) and err[key] > 0, key
    assert info["tilt_penalty"] in fitted.TILT_PENALTY_GRID and set(info["held_out_loss"]) == {
        str(c) for c in fitted.TILT_PENALTY_GRID}
    # the model is the family's closed form with exactly the recorded parameters
    rec = info["fitted"]
    same = ds.family_ratio(torch.tensor(rec["data_weights"]), torch.tensor(rec["bias_weights"]),
                           torch.tensor(rec["tilt"]))
    x = split.bias[:50].double()
    torch.testing.assert_close(model.log_ratio(x, 0.3), same.log_ratio(x, 0.3))


def test_under_label_bias_it_is_d_refs_proportions():
    """On toy2d (label bias only) the fitted data weights are D_ref's proportions (the posteriors are
    nearly the labels), so the fitted ceiling and `exact_empirical` nearly coincide there."""
    ds = Toy2D()
    split = ds.split(0.05, 3)
    _, info = _fit(ds, split)
    props = torch.bincount(split.ref_labels, minlength=8).double() / len(split.ref_labels)
    torch.testing.assert_close(torch.tensor(info["fitted"]["data_weights"], dtype=torch.float64), props,
                               rtol=0, atol=0.01)
    assert "tilt" not in info["error"]


def test_ratio_methods_run_with_the_fitted_ceiling(tmp_path):
    """`tiw_dsm@fitted_family` and `iw_dsm@fitted_family` run on gmm, gmm_tilt and toy2d (smoke budgets),
    and each record keeps the fit's parameters and errors."""
    from tiwbench.config import load_suite
    from tiwbench.sweep.runner import expand, run_cells

    cells = []
    for suite, ds in (("regime", "gmm"), ("regime", "gmm_tilt"), ("smoke", "toy2d")):
        cells += expand(load_suite(suite), "smoke", datasets=[ds], methods=["iw_dsm@fitted_family",
                                                                            "tiw_dsm@fitted_family"],
                        ref_fracs=[0.05], seeds=[0])
    cells = [c for c in cells if c.sweep.get("dim", 4) == 4]
    for c in cells:
        c.budget.train.steps, c.budget.sample.n = 20, 100
    summary = run_cells(cells, tmp_path)
    assert not summary["failed"] and len(summary["ok"]) == 6
    for path in summary["ok"]:
        rec = json.loads(open(path).read())
        kind = "time" if rec["method"].startswith("tiw") else "clean"
        info = rec["ratio"][f"{kind}@fitted_family"]
        assert info["provider"] == "fitted_family" and "error" in info and "fitted" in info
        assert ("tilt" in info["error"]) == (rec["dataset"] != "toy2d")
