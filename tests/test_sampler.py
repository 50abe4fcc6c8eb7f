"""The Heun sampler against exact mixtures, and its per-sample seeds."""

import torch

from tiwbench.diffusion.sampler import edm_sampler, edm_time_steps, per_sample_latents


def test_time_steps_follow_edm_schedule():
    t = edm_time_steps(18, 0.002, 80.0, 7.0)
    assert len(t) == 19 and float(t[0]) == 80.0 and abs(float(t[17]) - 0.002) < 1e-12 and float(t[18]) == 0
    assert torch.all(t[:-1] > t[1:])


def _proportions(mixture, samples):
    k = mixture.log_joint(samples.double()).argmax(1)
    return torch.bincount(k, minlength=len(mixture.weights)).double() / len(k)


def test_exact_denoiser_reproduces_mixture_weights(toy, exact_denoiser):
    n = 6000
    for mixture in (toy.data_mixture, toy.bias_mixture):
        net = exact_denoiser(lambda x, s, m=mixture: m.denoiser(x, s))
        samples = edm_sampler(net, per_sample_latents(range(n), (2,)), num_steps=18)
        props = _proportions(mixture, samples)
        se = (mixture.weights * (1 - mixture.weights) / n).sqrt()
        assert torch.all((props - mixture.weights).abs() < 4 * se + 0.005), (props, mixture.weights)
        # samples land on the modes, not between them
        dist = torch.cdist(samples.double(), mixture.means).min(1).values
        assert float(dist.median()) < 2 * float(mixture.stds[0])


def test_samples_do_not_depend_on_batch_size(toy, exact_denoiser):
    net = exact_denoiser(lambda x, s: toy.data_mixture.denoiser(x, s))
    seeds = list(range(100, 140))
    whole = edm_sampler(net, per_sample_latents(seeds, (2,)), num_steps=8)
    parts = torch.cat([edm_sampler(net, per_sample_latents(seeds[i : i + 7], (2,)), num_steps=8)
                       for i in range(0, 40, 7)])
    assert torch.allclose(whole, parts, atol=1e-6)
    assert torch.equal(per_sample_latents([5], (2,)), per_sample_latents([9, 5], (2,))[1:])


def test_network_samples_do_not_depend_on_batch_size():
    """With a real network too: no batch statistic couples samples (e.g. a stray BatchNorm)."""
    from tiwbench.diffusion.mlp import MLP
    from tiwbench.diffusion.precond import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(MLP(2, hidden=32, depth=2), sigma_data=0.7).eval()
    seeds = list(range(30))
    whole = edm_sampler(net, per_sample_latents(seeds, (2,)), num_steps=6)
    parts = torch.cat([edm_sampler(net, per_sample_latents(seeds[i : i + 4], (2,)), num_steps=6)
                       for i in range(0, 30, 4)])
    assert torch.allclose(whole, parts, atol=1e-4)
