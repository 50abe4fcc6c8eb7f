"""The estimators aimed at the correction (tiwbench/ratios/remedies.py): the frozen trunk + head, the ensemble's
temperature, the gate at σ*, and the observed-data denoiser that dlsm and trunk share."""

import math

import pytest
import torch

from tiwbench.config import RatioConfig
from tiwbench.data.mixtures import Toy2D
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.ratios.discriminator import HeldOut, LearnedRatio, RatioTrainConfig, held_out_split
from tiwbench.ratios.estimators import DLSM, observed_denoiser
from tiwbench.ratios.remedies import (
    EnsembleRatio,
    GatedRatio,
    Trunk,
    choose_sigma_star,
    correction_gain,
    fit_temperature,
)

CFG = RatioConfig(steps=40, hidden=16, depth=2, batch_size=32, select_every=20)


@pytest.fixture(scope="module")
def data():
    toy = Toy2D(n_bias=400)
    split = toy.split(0.25, 0)
    return toy, split.bias.float(), split.ref.float()


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_trunk_is_frozen_and_only_the_head_learns(data, one_thread):
    """The head changes, the trunk (the shared observed-data denoiser) stays bit-identical through the head's
    selection and refit; the correction still flows through the trunk (∇ₓ is not zero)."""
    toy, bias, ref = data
    est = Trunk(toy, CFG, True)
    est.shared, est.shared_seed = {}, 3
    g = torch.Generator().manual_seed(0)
    d_obs, _ = observed_denoiser(est, bias, ref, g)
    trunk_before = _state(d_obs.model)
    head_init = None

    def spy(model):  # the head's initial weights, to see that it trained
        nonlocal head_init
        head_init = _state(model.net.head)
        return model

    build = est.build_head
    est.build_head = lambda d: spy(build(d))
    model, info = est.fit(bias, ref, g)
    assert model.net.trunk is d_obs.model  # the shared denoiser, not a copy trained again
    after = _state(model.net.trunk)
    assert all(torch.equal(trunk_before[k], after[k]) for k in trunk_before), "the trunk moved"
    assert any(not torch.equal(head_init[k], v) for k, v in _state(model.net.head).items())
    assert info["trunk"]["l2"] in {CFG.weight_decay * f for f in Trunk.L2_FACTORS}
    x, s = torch.randn(8, 2), torch.full((8,), 0.5)
    assert model.log_ratio_and_grad(x, s)[1].abs().sum() > 0


def test_trunk_l2_is_chosen_on_held_out_bce(data, one_thread):
    """The recorded L2 strength is the one with the least held-out BCE among those tried."""
    toy, bias, ref = data
    est = Trunk(toy, CFG, True)
    est.shared, est.shared_seed = {}, 3
    _, info = est.fit(bias, ref, torch.Generator().manual_seed(1))
    tried = info["trunk"]["held_out_bce"]
    assert len(tried) == len(Trunk.L2_FACTORS)
    assert f"{info['trunk']['l2']:g}" == min(tried, key=tried.get)


def test_dlsm_and_trunk_share_one_observed_denoiser_whichever_asks_first(data, one_thread):
    toy, bias, ref = data
    shared = {}
    nets = []
    for cls in (DLSM, Trunk):
        est = cls(toy, CFG, True)
        est.shared, est.shared_seed = shared, 11
        nets.append(observed_denoiser(est, bias, ref, torch.Generator().manual_seed(5))[0])
    assert nets[0] is nets[1] and len(shared) == 1
    alone = Trunk(toy, CFG, True)
    alone.shared, alone.shared_seed = {}, 11  # another group order: the same network
    other = observed_denoiser(alone, bias, ref, torch.Generator().manual_seed(99))[0]
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), other.state_dict().values()))


class _Planted(LearnedRatio):
    """A 'ratio model' whose logit is a fixed function: a·uᵀx + b·σ."""

    def __init__(self, a, b):
        super().__init__(torch.nn.Identity(), 0.5)
        self.a, self.b = a, b

    def _logit(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(len(x))
        return self.a * (x @ torch.tensor([0.6, -0.8], dtype=x.dtype)) + self.b * sigma


def test_ensemble_averages_logits_and_divides_by_the_temperature():
    members = [_Planted(1.0, 0.0), _Planted(3.0, 0.2)]
    model = EnsembleRatio(members, temperature=2.0)
    x, s = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.3, dtype=torch.float64)
    mean = (members[0].logit(x, s) + members[1].logit(x, s)) / 2
    assert torch.allclose(model.logit(x, s), mean / 2)
    grad = model.log_ratio_and_grad(x, s)[1]
    assert torch.allclose(grad, torch.tensor([0.6, -0.8], dtype=torch.float64).expand(6, 2) * (2.0 / 2))


def test_temperature_undoes_an_overconfident_logit():
    """Labels drawn from sigmoid(z); logits 3z are over-confident by 3: the fitted T is 3 within sampling error,
    and the calibrated held-out BCE is below the raw one."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40_000, generator=g) * 2
    labels = (torch.rand(40_000, generator=g) < torch.sigmoid(z)).float()
    n1, n0 = int(labels.sum()), int((1 - labels).sum())
    weight = torch.where(labels > 0, 0.5 / n1, 0.5 / n0)
    held = HeldOut(*(torch.empty(0),) * 4, torch.empty(0), torch.empty(0), labels, weight, 0)
    t = fit_temperature(3 * z + math.log(n0 / n1), held)  # balanced: the class prior shifted out
    assert t == pytest.approx(3.0, rel=0.05)


def test_gate_drops_the_correction_from_sigma_star_up_and_keeps_the_weight():
    base = _Planted(1.0, 0.0)
    gated = GatedRatio(base, sigma_star=1.0)
    x = torch.randn(4, 2, dtype=torch.float64)
    s = torch.tensor([0.1, 0.9, 1.0, 5.0], dtype=torch.float64)
    log_w, grad = gated.log_ratio_and_grad(x, s)
    want_w, want_g = base.log_ratio_and_grad(x, s)
    assert torch.equal(log_w, want_w)
    assert torch.equal(grad[:2], want_g[:2]) and grad[2:].abs().sum() == 0 and want_g[2:].abs().sum() > 0


def test_sigma_star_keeps_the_bands_whose_summed_gain_is_largest():
    edges = [0.01, 0.1, 1.0, 10.0, 80.0]
    assert choose_sigma_star([1.0, 2.0, -0.5, -4.0], edges) == 1.0
    assert choose_sigma_star([1.0, -0.5, 2.0, -4.0], edges) == 10.0  # a dip is crossed when what follows pays
    assert choose_sigma_star([1.0, 1.0, 1.0, 1.0], edges) == math.inf
    assert choose_sigma_star([-1.0, 1.0, 1.0, 1.0], edges) == math.inf  # summed: +2 beats none
    assert choose_sigma_star([-3.0, 1.0, 1.0, -1.0], edges) == 0.01


class _ExactObs(torch.nn.Module):
    """The exact observed-data denoiser of toy2d's mixture with a share π of D_ref."""

    def __init__(self, toy, pi):
        super().__init__()
        d, b = toy.data_mixture, toy.bias_mixture
        self.mixture = d.with_weights(pi * d.weights + (1 - pi) * b.weights)
        self.sigma_data, self.kernel = toy.sigma_data, None

    def forward(self, x, sigma):
        return self.mixture.denoiser(x.double(), sigma.double()).to(x.dtype)


class _Corrupted(torch.nn.Module):
    """The exact logit, plus a slope 4·uᵀx/σ² from σ = 1 up: a correction error far above its signal there."""

    def __init__(self, toy):
        super().__init__()
        self.exact = toy.exact_ratio()

    def logit(self, x, sigma):
        exact = self.exact.logit(x.double(), sigma.double())
        bad = 4 * (x.double() @ torch.tensor([0.6, -0.8], dtype=torch.float64)) / sigma.double() ** 2
        return (exact + torch.where(sigma.double() >= 1.0, bad, torch.zeros_like(bad))).float()


def test_held_out_gain_finds_where_the_correction_stops_helping(data):
    """With the exact D_obs: the exact logit's correction lowers the held-out denoising error in every band
    where its signal is resolved; corrupted from σ = 1 up, the gain turns negative there and σ* lands at 1."""
    toy, bias, ref = data
    held = held_out_split(ref, bias, RatioTrainConfig(select_holdout=0.5), 0, True)
    d_obs = _ExactObs(toy, len(ref) / (len(ref) + len(bias)))
    odds = math.log(len(ref) / len(bias))
    edges = [0.05, 0.2, 1.0, 5.0, 80.0]
    exact = toy.exact_ratio()
    exact_gain = correction_gain(exact, d_obs, held, odds, edges)
    assert all(v > 0 for v in exact_gain[1:3]), exact_gain
    bad_gain = correction_gain(_Corrupted(toy), d_obs, held, odds, edges)
    assert bad_gain[:2] == pytest.approx(exact_gain[:2], rel=1e-4)
    assert bad_gain[2] < 0 and bad_gain[3] < 0
    assert choose_sigma_star(bad_gain, edges) == 1.0


class _Quiet:
    def phase(self, name, total):
        return None


def test_gated_estimator_in_a_group_differs_from_its_base_by_the_gate_alone(one_thread):
    from tiwbench.config import Budget
    from tiwbench.sweep.runner import Cell, Group

    budget = Budget()
    budget.ratio = RatioConfig(steps=20, hidden=16, depth=2, batch_size=32, select_every=10)
    g = Group(Cell("t", "toy2d", "tiw_dsm", 0.25, 0, "default", budget, ["bias"], {"n_bias": 400}), "cpu", None,
              _Quiet())
    base, gated = g.ratio("time", "trunk"), g.ratio("time", "trunk_gated")
    assert gated.base is base
    info = g.ratio_info["time@trunk_gated"]
    star = info["gate"]["sigma_star"]
    assert (star is None or star > 0) and len(info["gate"]["held_out_gain"]) == 12
    assert g.shared_fits and len(g.shared_fits) == 1  # one observed-data denoiser for both
    x = torch.randn(5, 2)
    for s in (0.01, 50.0):
        sig = torch.full((5,), s)
        kept = star is None or s < star
        assert torch.equal(gated.log_ratio_and_grad(x, sig)[1],
                           base.log_ratio_and_grad(x, sig)[1] * (1.0 if kept else 0.0))


def test_estimators_on_the_vector_trunk_refuse_images():
    from tiwbench.data.base import DataError
    from tiwbench.registry import RATIOS

    class Images:
        kind, name = "image", "digits_lt"

    for name in ("dlsm", "dlsm_trunk", "trunk_gated", "discriminator_gated"):
        with pytest.raises(DataError, match="vector data only"):
            RATIOS.get(name).check(Images())
    RATIOS.get("trunk").check(Images())  # `trunk` runs on images (tests/test_trunk_images.py)


def test_the_observed_denoiser_is_an_edm_denoiser(data):
    toy, bias, ref = data
    est = Trunk(toy, CFG, True)
    d_obs, info = observed_denoiser(est, bias, ref, torch.Generator().manual_seed(0))
    assert isinstance(d_obs, EDMPrecond) and math.isfinite(info["final_obs_dsm"])
    assert not any(p.requires_grad for p in d_obs.parameters())


def test_held_out_selection_regularises_its_own_copy(data, one_thread):
    """A regulariser reaches the model being trained, held-out selection's copy included: with a strong penalty
    on the logit's size the copy's logit stays near zero (a penalty bound to the original model would leave the
    copy a plain BCE classifier, and the step count and gate chosen on it would belong to another model)."""
    from tiwbench.diffusion.mlp import MLP
    from tiwbench.ratios.discriminator import choose_ratio_steps

    toy, bias, ref = data
    cfg = RatioTrainConfig(steps=100, batch_size=64, lr=3e-3, select_every=50)
    spread = {}
    for name in ("plain", "penalised"):
        torch.manual_seed(0)
        model = LearnedRatio(MLP(2, out_dim=1, hidden=32, depth=2), toy.sigma_data)
        reg = (lambda x, s, y, m: 100 * m.logit(x, s).pow(2).mean()) if name == "penalised" else None
        sel = choose_ratio_steps(model, bias, ref, cfg, torch.Generator().manual_seed(0), regulariser=reg)
        with torch.no_grad():
            spread[name] = sel.trial.logit(bias[:300], torch.full((300,), 0.05)).std().item()
    assert spread["penalised"] < 0.1 * spread["plain"], spread
