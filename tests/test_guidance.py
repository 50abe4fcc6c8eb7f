"""Sampling-time correction (dg_obs) and importance resampling (ir_obs) against exact mixtures.

p_obs = π p_data + (1 − π) p_bias is itself a mixture of the shared components, so its denoiser,
its score and p_data/p_obs are closed-form: the correction derived in METHOD.md §4 is checked
against them, and guided sampling of the exact p_obs denoiser against the exact p_data sampler.
"""

import math

import pytest
import torch

from baselines.dg_obs import GuidedDenoiser, data_over_obs_grad_factor, data_over_obs_log_ratio
from tiwbench.diffusion.sampler import edm_sampler, per_sample_latents
from tiwbench.registry import METHODS


def _obs(toy, pi):
    return toy.data_mixture.with_weights(pi * toy.data_mixture.weights + (1 - pi) * toy.bias_mixture.weights)


def _exact(toy, time_dependent=True):
    ratio = toy.exact_ratio(time_dependent=time_dependent)
    ratio.logit_max = 1e9  # the identities are about the unclipped ratio
    return ratio


def _proportions(mixture, samples):
    k = mixture.log_joint(samples.double()).argmax(1)
    return torch.bincount(k, minlength=len(mixture.weights)).double() / len(k)


@pytest.mark.parametrize("pi", [0.048, 0.5])
def test_correction_is_grad_log_data_over_obs(toy, pi):
    """∇log(p_data,σ/p_obs,σ) = ∇log w_σ · (1 − π)/(π w_σ + 1 − π), and the log ratio itself."""
    obs, ratio = _obs(toy, pi), _exact(toy)
    x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.2
    for sigma in (0.02, 0.3, 5.0):
        s = torch.full((len(x),), sigma, dtype=torch.float64)
        log_w, grad = ratio.log_ratio_and_grad(x, s)
        closed_log = toy.data_mixture.log_prob(x, sigma) - obs.log_prob(x, sigma)
        closed_grad = toy.data_mixture.score(x, sigma) - obs.score(x, sigma)
        assert torch.allclose(data_over_obs_log_ratio(log_w, pi), closed_log, atol=1e-9, rtol=1e-7)
        assert torch.allclose(grad * data_over_obs_grad_factor(log_w, pi)[:, None], closed_grad, atol=1e-8, rtol=1e-6)
        # so the guided p_obs denoiser is p_data's denoiser, pointwise
        guided = GuidedDenoiser(lambda x, s: obs.denoiser(x, s), ratio, pi)(x, s)
        assert torch.allclose(guided, toy.data_mixture.denoiser(x, sigma), atol=1e-8)


def test_guided_sampling_of_exact_obs_denoiser_matches_the_oracle(toy, exact_denoiser):
    pi, n = 100 / 2100, 4000  # toy2d at ref_frac 0.05
    obs, ratio = _obs(toy, pi), _exact(toy)
    lat = per_sample_latents(range(n), (2,))
    oracle = edm_sampler(exact_denoiser(lambda x, s: toy.data_mixture.denoiser(x, s)), lat, num_steps=18)
    dg = METHODS.get("dg_obs")()
    guided = edm_sampler(dg.sampling_denoiser(exact_denoiser(lambda x, s: obs.denoiser(x, s)), ratio, pi), lat,
                         num_steps=18)
    unguided = edm_sampler(exact_denoiser(lambda x, s: obs.denoiser(x, s)), lat, num_steps=18)
    target = toy.data_mixture.weights

    def bias(samples):  # the `bias` metric: ‖p̂ − p*‖₂
        return float((_proportions(toy.data_mixture, samples) - target).norm())

    se = (target * (1 - target) / n).sqrt()
    assert torch.all((_proportions(toy.data_mixture, guided) - target).abs() < 4 * se + 0.005)
    assert abs(bias(guided) - bias(oracle)) < 0.01, (bias(guided), bias(oracle))
    assert bias(unguided) > 5 * bias(oracle), (bias(unguided), bias(oracle))  # the test can fail
    # the same latents follow (nearly) the same trajectories: the guided denoiser is D_data
    assert float((guided - oracle).norm(dim=1).median()) < 1e-3


def test_guidance_scale_zero_is_the_trained_denoiser(toy, exact_denoiser):
    obs, ratio = _obs(toy, 0.1), _exact(toy)
    lat = per_sample_latents(range(50), (2,))
    net = exact_denoiser(lambda x, s: obs.denoiser(x, s))
    plain = edm_sampler(net, lat, num_steps=6)
    zero = edm_sampler(METHODS.get("dg_obs")(scale=0.0).sampling_denoiser(net, ratio, 0.1), lat, num_steps=6)
    assert torch.equal(plain, zero)


def test_guidance_with_a_learned_ratio_runs_inside_the_samplers_inference_mode(toy):
    """A learned ratio needs autograd for ∇ₓ log w, inside a sampler that runs in inference mode."""
    from tiwbench.config import RatioConfig
    from tiwbench.ratios.discriminator import make_ratio

    torch.manual_seed(0)
    ratio = make_ratio(toy, RatioConfig(hidden=16, depth=2), time_dependent=True)
    guided = GuidedDenoiser(lambda x, s: 0.9 * x, ratio, 0.1)
    out = edm_sampler(guided, per_sample_latents(range(8), (2,)), num_steps=4)
    assert torch.isfinite(out).all()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    s = torch.full((8,), 0.7)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ratio.logit(xr, s).sum(), xr)
    factor = data_over_obs_grad_factor(ratio.logit(x, s).detach(), 0.1)
    with torch.inference_mode():
        corr = guided.correction(x.clone(), s.clone())
    assert torch.allclose(corr, 0.49 * factor[:, None] * g, atol=1e-6)


def test_importance_resampling_of_obs_samples_gives_data_weights(toy):
    pi, n = 0.1, 20000
    obs, ratio = _obs(toy, pi), _exact(toy, time_dependent=False)
    samples, _ = obs.sample(n, torch.Generator().manual_seed(3))
    ir = METHODS.get("ir_obs")()
    out = ir.finish_samples(samples.float(), ratio, pi, torch.Generator().manual_seed(4))
    again = ir.finish_samples(samples.float(), ratio, pi, torch.Generator().manual_seed(4))
    assert torch.equal(out, again) and out.shape == samples.shape  # seeded
    props, target = _proportions(toy.data_mixture, out), toy.data_mixture.weights
    ess = ir.sampling_info["resample_ess"] * n  # resampling noise is set by the weights' ESS
    se = (target * (1 - target) / ess).sqrt() + (target * (1 - target) / n).sqrt()
    assert torch.all((props - target).abs() < 4 * se + 0.005), (props, target)
    assert float((_proportions(toy.data_mixture, samples.float()) - target).norm()) > 0.1  # it had to move
    assert math.isfinite(ir.sampling_info["resample_ess"])
