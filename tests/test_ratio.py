"""Density-ratio models: clipping, balanced BCE against the exact ratio, diagnostics."""

import math

import torch

from tiwbench.config import RatioConfig
from tiwbench.metrics.base import attribute_bias
from tiwbench.ratios.diagnostics import ratio_diagnostics
from tiwbench.ratios.discriminator import RatioTrainConfig, make_ratio, train_ratio
from tiwbench.training.loop import effective_sample_size


class Affine(torch.nn.Module):
    """ℓ = a·x_in[0] (no time input): a logit whose clip region is known exactly."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, c_noise):
        return (self.a * x[:, :1]).reshape(-1, 1)


def test_clip_binds_where_expected_and_zeroes_the_gradient():
    from tiwbench.ratios.discriminator import LearnedRatio

    model = LearnedRatio(Affine(10.0), sigma_data=1.0, time_dependent=True, logit_max=5.0)
    sigma = torch.zeros(4)
    x = torch.tensor([[0.1, 0.0], [0.4, 0.0], [0.6, 0.0], [-0.7, 0.0]])  # ℓ = 10·x/sqrt(0+1)
    logit, grad = model.log_ratio_and_grad(x, sigma)
    assert torch.allclose(logit, torch.tensor([1.0, 4.0, 5.0, -5.0]))
    assert torch.allclose(grad[:, 0], torch.tensor([10.0, 10.0, 0.0, 0.0]))
    assert model.clip_rate == 0.5


def test_balanced_bce_recovers_the_exact_time_dependent_ratio(toy):
    """At the BCE optimum d = p_data/(p_data + p_bias), so exp(ℓ) estimates w_σ: the learned ratio's
    error is far below that of the constant guess w = 1, on every σ band."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    bias, _ = toy.bias_mixture.sample(4000, g)
    ref, _ = toy.data_mixture.sample(4000, g)
    model = make_ratio(toy, RatioConfig(hidden=64, depth=2), time_dependent=True)
    train_ratio(model, bias.float(), ref.float(), RatioTrainConfig(steps=800, batch_size=256), g)
    exact = toy.exact_ratio()
    rows = ratio_diagnostics(model, bias.float(), ref.float(), torch.Generator().manual_seed(1), exact=exact, n=1500)
    for row in rows[:3]:  # where the two distributions differ (σ ≤ 1)
        # the error of w ≡ 1 on D_bias samples of that band, for scale
        lo, hi = row["sigma_lo"], row["sigma_hi"]
        s = torch.full((1500,), math.sqrt(lo * hi), dtype=torch.float64)
        x = bias[:1500].double() + s[:, None] * torch.randn(1500, 2, generator=g, dtype=torch.float64)
        w = exact.logit(x, s).double().exp()
        if hi <= 0.2:  # narrow bands, where σ at the band's centre stands for the whole band
            assert row["ratio_mse"] < 0.6 * float(((w - 1) ** 2).mean()), row
        assert row["accuracy"] > 0.6
        # and the estimate orders samples as the exact ratio does (swapped labels would anti-correlate)
        log_hat = model.log_ratio(x.float(), s.float()).double()
        assert float(torch.corrcoef(torch.stack([log_hat, w.log()]))[0, 1]) > 0.8
    assert rows[-1]["accuracy"] < 0.56  # at σ ≫ 1 the two perturbed distributions merge


def test_clean_classifier_diagnostics_use_clean_data(toy):
    g = torch.Generator().manual_seed(0)
    bias, _ = toy.bias_mixture.sample(500, g)
    ref, _ = toy.data_mixture.sample(500, g)
    model = make_ratio(toy, RatioConfig(hidden=16, depth=1), time_dependent=False)
    rows = ratio_diagnostics(model, bias.float(), ref.float(), g, exact=toy.exact_ratio(False), n=200)
    assert len(rows) == 1 and rows[0]["sigma_hi"] == 0.0


def test_bias_counts_empty_classes():
    """A generator collapsed onto one class scores the worst bias, not a better one (METHOD.md §7)."""
    k = 10
    target = torch.full((k,), 1 / k)
    collapsed, props = attribute_bias(torch.zeros(1000, dtype=torch.long), target)
    assert math.isclose(collapsed, math.sqrt((1 - 1 / k) ** 2 + (k - 1) / k**2))
    assert props[0] == 1.0 and len(props) == k
    balanced, _ = attribute_bias(torch.arange(1000) % k, target)
    half, _ = attribute_bias(torch.arange(1000) % 5, target)  # five classes never generated
    assert balanced < 1e-7 < half < collapsed


def test_effective_sample_size():
    assert float(effective_sample_size(torch.ones(8))) == 1.0
    assert math.isclose(float(effective_sample_size(torch.tensor([1.0, 0, 0, 0]))), 0.25)
