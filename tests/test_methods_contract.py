"""A contract every registered method meets (built-in and entry-point plugins alike)."""

import pytest
import torch

from tiwbench.diffusion.losses import Batch
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.registry import METHODS
from tiwbench.training.methods import Method


def _setup(toy, n=16):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = EDMPrecond(MLP(2, hidden=32, depth=2), sigma_data=toy.sigma_data)
    y = torch.randn(n, 2, generator=g)
    is_ref = torch.arange(n) % 3 == 0
    batch = Batch.draw(y, is_ref, g)
    return net, batch


def _ratio_for(method, toy):
    return None if method.ratio is None else toy.exact_ratio(time_dependent=method.ratio == "time")


# the score-network family's contract (per-element DSM losses); the gan family's is tests/test_gan.py
SCORE_METHODS = [n for n in METHODS.names() if METHODS.get(n).family == "score"]


@pytest.mark.parametrize("name", SCORE_METHODS)
def test_loss_is_per_element(name, toy):
    method = METHODS.get(name)()
    assert isinstance(method, Method) and method.train_on in ("obs", "ref", "oracle")
    net, batch = _setup(toy)
    loss = method.loss(net, batch, _ratio_for(method, toy))
    assert loss.shape == batch.y.shape and torch.isfinite(loss).all()


# The one documented exemption from per-sample independence: the replica of the released code, whose
# broadcast collapses the weights to one batch scalar Σ_i 2 d_i (METHOD.md §6). It is held instead to
# exactly that coupling, in test_released_weight_couples_samples_by_one_scalar.
COLLAPSED_BATCH_WEIGHT = {"tiw_dsm_release"}


@pytest.mark.parametrize("name", sorted(set(SCORE_METHODS) - COLLAPSED_BATCH_WEIGHT))
def test_changing_one_sample_changes_only_its_loss(name, toy):
    method = METHODS.get(name)()
    ratio = _ratio_for(method, toy)
    net, batch = _setup(toy)
    base = method.loss(net, batch, ratio).detach()
    for i in (0, 1):  # a D_ref sample and a D_bias sample
        y = batch.y.clone()
        y[i] += 0.7
        other = method.loss(net, Batch(y, batch.is_ref, batch.sigma, batch.noise), ratio).detach()
        changed = (other != base).any(dim=1)
        assert changed[i] and not changed[torch.arange(len(y)) != i].any()
        flip = batch.is_ref.clone()
        flip[i] = ~flip[i]  # the sample's weight: reference (1) or biased (w)
        other = method.loss(net, Batch(batch.y, flip, batch.sigma, batch.noise), ratio).detach()
        changed = (other != base).any(dim=1)
        assert not changed[torch.arange(len(y)) != i].any()
        if method.ratio is not None:
            assert changed[i], "a weighted method must treat D_ref and D_bias samples differently"


def test_weighted_methods_reduce_to_dsm_on_reference_samples(toy):
    net, batch = _setup(toy)
    ref_batch = Batch(batch.y, torch.ones_like(batch.is_ref), batch.sigma, batch.noise)
    plain = METHODS.get("dsm_obs")().loss(net, ref_batch)
    for name in ("tiw_dsm", "tiw_dsm_nocorr", "tiw_dsm_noweight", "iw_dsm"):
        m = METHODS.get(name)()
        assert torch.allclose(m.loss(net, ref_batch, _ratio_for(m, toy)), plain)


def test_tiw_dsm_target_shift_is_sigma2_grad_log_w(toy):
    """On D_bias samples, tiw_dsm = w · λ‖D − y − σ²∇log w‖², checked against the closed form."""
    net, batch = _setup(toy)
    batch = Batch(batch.y, torch.zeros_like(batch.is_ref), batch.sigma, batch.noise)
    ratio = toy.exact_ratio()
    loss = METHODS.get("tiw_dsm")().loss(net, batch, ratio)
    x = batch.x.double()
    s = batch.sigma.double()
    w = (toy.data_mixture.log_prob(x, s) - toy.bias_mixture.log_prob(x, s)).exp()
    grad = toy.data_mixture.score(x, s) - toy.bias_mixture.score(x, s)
    lam = (s**2 + toy.sigma_data**2) / (s * toy.sigma_data) ** 2
    d = net(batch.x, batch.sigma).double()
    expected = (lam * w)[:, None] * (d - batch.y.double() - s[:, None] ** 2 * grad) ** 2
    assert torch.allclose(loss.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(COLLAPSED_BATCH_WEIGHT))
def test_released_weight_couples_samples_by_one_scalar(name, toy):
    """Changing sample i rescales every other sample's loss by one common factor, and the D_ref/D_bias
    flag changes nothing (the release does not know it)."""
    method = METHODS.get(name)()
    ratio = _ratio_for(method, toy)
    net, batch = _setup(toy)
    base = method.loss(net, batch, ratio).detach().double()
    y = batch.y.clone()
    y[1] += 0.7
    other = method.loss(net, Batch(y, batch.is_ref, batch.sigma, batch.noise), ratio).detach().double()
    rest = torch.arange(len(y)) != 1
    factor = other[rest] / base[rest]
    assert torch.allclose(factor, factor.flatten()[0].expand_as(factor), rtol=1e-5)
    assert abs(float(factor.flatten()[0]) - 1) > 1e-4
    flip = Batch(batch.y, ~batch.is_ref, batch.sigma, batch.noise)
    assert torch.equal(method.loss(net, flip, ratio).detach().double(), base)
