"""Perturbation kernels (METHOD.md §2a) against their SDEs, the exact mixtures and Theorem 1.

References written here from Song et al.'s SDEs, not from the kernels' code: drift f(t) and
diffusion g(t)² of each SDE, simulated by Euler–Maruyama; the marginal of x_t written as a mixture
in x_t-space; EDM's own sampler for the generic Algorithm 1.
"""

import math

import pytest
import torch

from tiwbench.data.mixtures import GaussianMixture
from tiwbench.diffusion.kernels import EDM, SubVP, make_kernel
from tiwbench.diffusion.losses import Batch, dsm_loss
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.diffusion.sampler import edm_sampler, kernel_sampler, per_sample_latents
from tiwbench.registry import KERNELS, METHODS

NAMES = ("edm", "vp", "subvp", "ve", "rf")
BMIN, BMAX = 0.1, 20.0  # Song et al.'s schedule, written here independently of the kernel's defaults


def _beta(t):
    return BMIN + (BMAX - BMIN) * t


def _B(t):
    return BMIN * t + 0.5 * (BMAX - BMIN) * t**2


SDES = {  # name: (drift coefficient f(t) in dx = f x dt + g dw, g(t)²)
    "vp": (lambda t: -0.5 * _beta(t), lambda t: _beta(t)),
    "subvp": (lambda t: -0.5 * _beta(t), lambda t: _beta(t) * (1 - math.exp(-2 * _B(t)))),
    "ve": (lambda t: 0.0, lambda t: 1.0),  # σ² = t: dσ²/dt = 1
    "edm": (lambda t: 0.0, lambda t: 2 * t),  # σ = t: dσ²/dt = 2t
    # the linear interpolant x_t = (1 − t) y + t n: mean (1 − t) y, variance t², so f = −1/(1 − t) and
    # g² = d(t²)/dt − 2 f t² = 2t + 2t²/(1 − t) = 2t/(1 − t)
    "rf": (lambda t: -1 / (1 - t), lambda t: 2 * t / (1 - t)),
}


def test_registry_lists_the_four_kernels():
    assert set(NAMES) <= set(KERNELS.names())
    with pytest.raises(ValueError, match="beta_maks"):
        make_kernel("vp", {"vp": {"beta_maks": 20.0}})
    assert make_kernel("vp", {"vp": {"beta_max": 20}}).params["beta_max"] == 20.0


def test_vp_schedules_reach_song_et_al_sigma_at_t1():
    """β_min 0.1, β_max 20 (Song et al.; Karras et al.'s β_d = 19.9 is β_max − β_min): B(1) = 10.05, so
    VP's σ(1) = √(e^10.05 − 1) and sub-VP's 2 sinh(10.05/2) = e^5.025 − e^−5.025, both ≈ 152.2."""
    one = torch.tensor(1.0, dtype=torch.float64)
    assert float(make_kernel("vp").sigma(one)) == pytest.approx(math.sqrt(math.exp(10.05) - 1), rel=1e-12)
    assert float(make_kernel("subvp").sigma(one)) == pytest.approx(math.exp(5.025) - math.exp(-5.025), rel=1e-12)
    assert float(make_kernel("vp").sigma(one)) == pytest.approx(152.17, abs=0.01)
    assert float(make_kernel("subvp").sigma(one)) == pytest.approx(152.16, abs=0.01)


def test_ls_kernels_shows_each_schedule():
    from typer.testing import CliRunner

    from tiwbench.cli import app

    r = CliRunner().invoke(app, ["ls", "kernels"])
    assert r.exit_code == 0
    lines = {line.split()[0]: line for line in r.output.splitlines()}
    for name in ("vp", "subvp"):
        assert "beta_min 0.1, beta_max 20, eps_t 0.001" in lines[name]


@pytest.mark.parametrize("name", NAMES)
def test_perturbation_matches_the_sdes_marginal(name, one_thread):
    """x_t = s(t)(y + σ(t)n) against an Euler–Maruyama simulation of the SDE from fixed y."""
    kernel = make_kernel(name)
    f, g2 = SDES[name]
    g = torch.Generator().manual_seed(0)
    paths = 10_000
    y = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64).repeat(1, paths)
    # t = 0.2: sub-VP std 0.34, VP 0.58; rf's t lives in [0, 1)
    t_end, steps = (0.2, 400) if name in ("vp", "subvp") else (0.5, 400) if name == "rf" else (2.0, 400)
    x, dt = y.clone(), t_end / steps
    for i in range(steps):
        t = (i + 0.5) * dt
        x = x + f(t) * x * dt + math.sqrt(g2(t) * dt) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = torch.tensor(t_end, dtype=torch.float64)
    mean, std = kernel.s(t) * y[:, 0], kernel.s(t) * kernel.sigma(t)
    assert torch.allclose(x.mean(1), mean, atol=4 * float(std) / math.sqrt(paths) + 5e-3), (x.mean(1), mean)
    assert torch.allclose(x.std(1), std.expand(3), rtol=0.04), (x.std(1), std)
    # and the kernel's own perturb, per starting point
    xt = kernel.perturb(y.reshape(-1, 1), t_end, torch.randn(3 * paths, 1, generator=g, dtype=torch.float64))
    xt = xt.reshape(3, paths)
    assert torch.allclose(xt.mean(1), mean, atol=4 * float(std) / math.sqrt(paths) + 1e-3)
    assert torch.allclose(xt.std(1), std.expand(3), rtol=0.03)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_and_inverse(name):
    kernel = make_kernel(name)
    t = torch.tensor([0.01, 0.2, 0.7, 0.95 if name == "rf" else 1.0], dtype=torch.float64)  # rf: σ(1) = ∞
    h = 1e-6
    assert torch.allclose(kernel.sigma_deriv(t), (kernel.sigma(t + h) - kernel.sigma(t - h)) / (2 * h), rtol=1e-5)
    assert torch.allclose(kernel.s_deriv(t), (kernel.s(t + h) - kernel.s(t - h)) / (2 * h), rtol=1e-5, atol=1e-9)
    assert torch.allclose(kernel.sigma_inv(kernel.sigma(t)), t, rtol=1e-9)
    steps = kernel.time_steps(10)
    assert float(steps[-1]) == 0 and torch.all(steps[:-1] > steps[1:])


def test_subvp_variance_is_vps_squared():
    """Song et al.: the sub-VP marginal's variance (1 − e^{−B})² against VP's 1 − e^{−B}."""
    t = torch.linspace(0.01, 1, 20, dtype=torch.float64)
    sub, vp = make_kernel("subvp"), make_kernel("vp")
    assert torch.allclose((sub.s(t) * sub.sigma(t)) ** 2, (1 - torch.exp(-_B(t))) ** 2)
    assert torch.allclose((vp.s(t) * vp.sigma(t)) ** 2, 1 - torch.exp(-_B(t)))
    assert isinstance(sub, SubVP)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "rf"])
def test_closed_form_ratio_follows_s_and_sigma(toy, name):
    """w_t(x_t) = w_σ(x_t/s): against the mixtures written directly in x_t-space (means s·μ, stds s·√(s_k²+σ²))."""
    kernel = make_kernel(name)
    ratio = toy.exact_ratio()
    g = torch.Generator().manual_seed(1)
    for t in (0.05, 0.3, 0.9):
        tt = torch.tensor(t, dtype=torch.float64)
        s, sig = float(kernel.s(tt)), float(kernel.sigma(tt))
        y, _ = toy.bias_mixture.sample(500, g)
        x_t = kernel.perturb(y, t, torch.randn(y.shape, generator=g, dtype=torch.float64))
        direct = [GaussianMixture(m.means * s, s * (m.stds**2 + sig**2).sqrt(), m.weights)
                  for m in (toy.data_mixture, toy.bias_mixture)]
        log_w, grad = ratio.log_ratio_at_time(x_t, t, kernel)
        assert torch.allclose(log_w, direct[0].log_prob(x_t) - direct[1].log_prob(x_t), atol=1e-8)
        assert torch.allclose(grad, direct[0].score(x_t) - direct[1].score(x_t), atol=1e-7)


def _proportions(mixture, samples):
    k = mixture.log_joint(samples.double()).argmax(1)
    return torch.bincount(k, minlength=len(mixture.weights)).double() / len(k)


@pytest.mark.parametrize("name", NAMES)
def test_exact_denoiser_sampled_under_each_kernel_reproduces_the_mixture(toy, exact_denoiser, name, one_thread):
    n = 2000
    kernel = make_kernel(name)
    for mixture in (toy.data_mixture, toy.bias_mixture):
        net = exact_denoiser(lambda x, s, m=mixture: m.denoiser(x, s))
        samples = kernel_sampler(net, per_sample_latents(range(n), (2,)), kernel, num_steps=32)
        props = _proportions(mixture, samples)
        se = (mixture.weights * (1 - mixture.weights) / n).sqrt()
        assert torch.all((props - mixture.weights).abs() < 4 * se + 0.005), (name, props, mixture.weights)
        dist = torch.cdist(samples.double(), mixture.means).min(1).values
        assert float(dist.median()) < 2 * float(mixture.stds[0]), name


def test_generic_sampler_under_edm_is_edms_sampler(toy, exact_denoiser):
    net = exact_denoiser(lambda x, s: toy.data_mixture.denoiser(x, s))
    lat = per_sample_latents(range(200), (2,))
    assert torch.allclose(kernel_sampler(net, lat, EDM(), num_steps=18), edm_sampler(net, lat, num_steps=18),
                          atol=1e-5)


def test_edm_kernel_is_the_code_it_replaces():
    """The edm kernel's training draws and preconditioning equal the EDM code paths (None)."""
    torch.manual_seed(0)
    from tiwbench.diffusion.mlp import MLP

    model = MLP(2, hidden=16, depth=2)
    a, b = EDMPrecond(model, 0.7), EDMPrecond(model, 0.7, kernel=EDM())
    y = torch.randn(64, 2)
    ba = Batch.draw(y, torch.zeros(64, dtype=torch.bool), torch.Generator().manual_seed(3))
    bb = Batch.draw(y, torch.zeros(64, dtype=torch.bool), torch.Generator().manual_seed(3), kernel=EDM())
    assert torch.equal(ba.sigma, bb.sigma)
    assert torch.equal(dsm_loss(a, ba), dsm_loss(b, bb))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "rf"])
def test_preconditioning_gives_unit_scale_targets(name):
    """Karras et al.: λ(σ) c_out(σ)² = 1 for VP and VE (ε-prediction), so the raw network's target
    (y − c_skip x)/c_out has unit scale."""
    kernel = make_kernel(name)
    sigma = torch.tensor([0.01, 0.3, 2.0, 50.0], dtype=torch.float64)
    c_skip, c_out, c_in, _ = kernel.precond(sigma, 0.5)
    assert torch.allclose(kernel.loss_weight(sigma, 0.5) * c_out**2, torch.ones_like(sigma))
    if name in ("subvp", "rf"):  # the network sees x_t = s·x̂
        assert torch.allclose(c_in, kernel.s(kernel.sigma_inv(sigma)))


@pytest.mark.parametrize("name", NAMES)
def test_theorem1_under_each_kernel(toy, exact_denoiser, name, one_thread):
    """With the exact ratio, the kernel's tiw_dsm loss (its λ, its σ draws) minus its plain DSM on p_data
    does not depend on the denoiser (paired samples)."""
    kernel = make_kernel(name)
    n = 60_000
    g = torch.Generator().manual_seed(2)
    yb, _ = toy.bias_mixture.sample(n, g)
    yd, _ = toy.data_mixture.sample(n, g)
    ratio = toy.exact_ratio()
    ratio.logit_max = 1e9
    bb = Batch.draw(yb, torch.zeros(n, dtype=torch.bool), g, kernel=kernel)
    bd = Batch.draw(yd, torch.ones(n, dtype=torch.bool), g, kernel=kernel)
    bb.sigma, bd.sigma = bb.sigma.double().clamp(0.05, 5.0), bd.sigma.double().clamp(0.05, 5.0)
    tiw, plain = METHODS.get("tiw_dsm")(), METHODS.get("dsm_obs")()

    def den(fn):
        d = exact_denoiser(fn)
        d.kernel = kernel
        return d

    dens = {"data": den(lambda x, s: toy.data_mixture.denoiser(x, s)),
            "bias": den(lambda x, s: toy.bias_mixture.denoiser(x, s)),
            "shrink": den(lambda x, s: 0.5 * x + 0.1)}
    per = {k: (tiw.loss(d, bb, ratio).sum(1), plain.loss(d, bd).sum(1)) for k, d in dens.items()}
    for k in ("bias", "shrink"):
        dt, dd = per[k][0] - per["data"][0], per[k][1] - per["data"][1]
        gap = float(dt.mean() - dd.mean())
        se = math.sqrt(float(dt.var() / n + dd.var() / n))
        assert abs(gap) < 5 * se + 1e-3, (name, k, gap, se)
    # and the reweighting-only ablation is not a constant shift under the same draws
    nocorr = METHODS.get("tiw_dsm_nocorr")()
    dt = nocorr.loss(dens["bias"], bb, ratio).sum(1) - nocorr.loss(dens["data"], bb, ratio).sum(1)
    dd = per["bias"][1] - per["data"][1]
    assert abs(float(dt.mean() - dd.mean())) > 10 * math.sqrt(float(dt.var() / n + dd.var() / n)), name


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "rf"])
def test_gmm_closed_form_ratio_follows_s_and_sigma(name):
    """The high-dimensional mixture (label bias and tilt) under each kernel: its exact ratio against both
    mixtures written directly in x_t-space (means s·μ, factors s·F, isotropic std s·√(ε² + σ²), at σ = 0)."""
    from tiwbench.data.gmm import GMM, LowRankMixture

    ds = GMM(dim=6, rank=2, modes=4, tilt=0.7, rho=0.1)
    kernel, ratio = make_kernel(name), ds.exact_ratio()
    g = torch.Generator().manual_seed(2)
    for t in (0.05, 0.3, 0.9):
        tt = torch.tensor(t, dtype=torch.float64)
        s, sig = float(kernel.s(tt)), float(kernel.sigma(tt))
        y, _ = ds.bias_mixture.sample(400, g)
        x_t = kernel.perturb(y.double(), t, torch.randn(y.shape, generator=g, dtype=torch.float64))
        direct = [LowRankMixture(m.means * s, m.factors * s, s * (m.eps**2 + sig**2) ** 0.5, m.weights)
                  for m in (ds.data_mixture, ds.bias_mixture)]
        log_w, grad = ratio.log_ratio_at_time(x_t, t, kernel)
        assert torch.allclose(log_w, direct[0].log_prob(x_t) - direct[1].log_prob(x_t), atol=1e-7)
        assert torch.allclose(grad, direct[0].score(x_t) - direct[1].score(x_t), atol=1e-6)


def test_rf_loss_is_flow_matching_on_the_linear_interpolant(one_thread):
    """Under rf, the DSM loss of the preconditioned network is flow matching's ‖F(x_t, t) − (n − y)‖² with
    x_t = (1 − t) y + t n (written here from the interpolant, not from the kernel)."""
    from tiwbench.diffusion.mlp import MLP

    torch.manual_seed(0)
    kernel = make_kernel("rf")
    raw = MLP(2, hidden=16, depth=2)
    net = EDMPrecond(raw, 0.7, kernel=kernel)
    y = torch.randn(256, 2)
    batch = Batch.draw(y, torch.zeros(256, dtype=torch.bool), torch.Generator().manual_seed(4), kernel=kernel)
    t = batch.sigma / (1 + batch.sigma)
    x_t = (1 - t)[:, None] * y + t[:, None] * batch.noise
    fm = (raw(x_t, t) - (batch.noise - y)).pow(2).sum(1)
    assert torch.allclose(dsm_loss(net, batch).sum(1), fm, rtol=1e-4, atol=1e-5)
    assert 0 < float(t.min()) and float(t.max()) < 1
    # and the sampler's drift is the velocity: dx/dt = (x − D(x/(1 − t); t/(1 − t)))/t
    tt = torch.tensor(0.3, dtype=torch.float64)
    drift = (kernel.sigma_deriv(tt) / kernel.sigma(tt) + kernel.s_deriv(tt) / kernel.s(tt),
             kernel.sigma_deriv(tt) * kernel.s(tt) / kernel.sigma(tt))
    assert torch.allclose(torch.stack(drift), torch.tensor([1 / 0.3, 1 / 0.3], dtype=torch.float64))
