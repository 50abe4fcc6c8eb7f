"""Speed of the parts a sweep spends its time in. Run with ``make bench`` (skipped by ``make test``).

Every method's training step is timed on the same network, data and batch as ``dsm_obs``, so the
ratios isolate what the method adds (the ratio model's forward pass and, for TIW-DSM, its input
gradient on the D_bias samples).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tiwbench.config import TrainConfig
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.diffusion.sampler import edm_sampler, per_sample_latents
from tiwbench.ratios.discriminator import LearnedRatio, RatioTrainConfig, train_ratio
from tiwbench.registry import METHODS
from tiwbench.training.loop import train_score

METHOD_NAMES = ["dsm_ref", "dsm_obs", "iw_dsm", "tiw_dsm_nocorr", "tiw_dsm", "oracle"]
HAVE_UNET = importlib.util.find_spec("tiwbench.diffusion.unet") is not None
HAVE_EVALUATOR = importlib.util.find_spec("tiwbench.evaluator") is not None


def _toy_data(n=5000, ref_frac=0.1):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g), torch.rand(n, generator=g) < ref_frac / (1 + ref_frac)


def _digits_data(n=900, ref_frac=0.1):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g).clamp(-1, 1), torch.rand(n, generator=g) < ref_frac / (1 + ref_frac)


NETWORKS = {
    # the toy2d cell of `make run` (suites/ref_size.yaml, default profile): MLP 3×128, batch 256
    "toy2d_mlp": dict(data=_toy_data, threads=1, steps=50, rounds=10,
                      net=lambda: EDMPrecond(MLP(2, hidden=128, depth=3), 0.5),
                      ratio=lambda t: LearnedRatio(MLP(2, out_dim=1, hidden=128, depth=3, time=t), 0.5, t)),
}
if HAVE_UNET:
    def _unet():
        from tiwbench.diffusion.unet import UNet

        return EDMPrecond(UNet(in_channels=1, resolution=8, channels=32, channel_mult=(1, 2)), 0.5)

    def _disc(t):
        from tiwbench.diffusion.unet import ImageDiscriminator

        return LearnedRatio(ImageDiscriminator(in_channels=1, resolution=8, channels=32, time=t), 0.5, t)

    # 8×8 digits: U-Net ch=32, batch 256 (LIBS.md §5); 1 thread: on a shared 2-core machine 2 threads
    # measured the neighbours' load more than the method
    NETWORKS["digits_unet"] = dict(data=_digits_data, threads=1, steps=3, rounds=4, net=_unet, ratio=_disc)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("method_name", METHOD_NAMES)
def test_train_step(benchmark, threads, network, method_name):
    spec = NETWORKS[network]
    threads(spec["threads"])
    x, is_ref = spec["data"]()
    method = METHODS.get(method_name)()
    ratio = None if method.ratio is None else spec["ratio"](method.ratio == "time").eval()
    cfg = TrainConfig(steps=spec["steps"], batch_size=256, check_every=10**9)
    torch.manual_seed(0)
    net = spec["net"]()

    def run():
        train_score(method, net, x, is_ref, ratio, cfg, torch.Generator().manual_seed(0))

    benchmark.group = f"train step: {network}"
    benchmark.extra_info.update(method=method_name, network=network, steps=cfg.steps, batch=cfg.batch_size,
                                threads=spec["threads"])
    benchmark.pedantic(run, rounds=spec["rounds"], warmup_rounds=1)


@pytest.mark.parametrize("num_steps", [6, 12, 18, 40])
def test_sampler_toy2d(benchmark, threads, num_steps):
    threads(1)
    torch.manual_seed(0)
    net = NETWORKS["toy2d_mlp"]["net"]().eval()
    n = 4000
    lat = per_sample_latents(range(n), (2,))
    benchmark.group = "sampler: toy2d_mlp"
    benchmark.extra_info.update(items=n, unit="samples", num_steps=num_steps, evaluations=2 * num_steps - 1)
    benchmark.pedantic(lambda: edm_sampler(net, lat, num_steps), rounds=3, warmup_rounds=1)


@pytest.mark.skipif(not HAVE_UNET, reason="tiwbench.diffusion.unet not present")
@pytest.mark.parametrize("num_steps", [6, 18])
def test_sampler_digits(benchmark, threads, num_steps):
    threads(1)
    torch.manual_seed(0)
    net = NETWORKS["digits_unet"]["net"]().eval()
    n = 256
    lat = per_sample_latents(range(n), (1, 8, 8))
    benchmark.group = "sampler: digits_unet"
    benchmark.extra_info.update(items=n, unit="samples", num_steps=num_steps, evaluations=2 * num_steps - 1)
    benchmark.pedantic(lambda: edm_sampler(net, lat, num_steps), rounds=2, warmup_rounds=1)


def test_per_sample_latents(benchmark):
    n = 4000
    benchmark.group = "sampler: latents"
    benchmark.extra_info.update(items=n, unit="samples")
    benchmark.pedantic(lambda: per_sample_latents(range(n), (2,)), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("network", list(NETWORKS))
def test_ratio_training(benchmark, threads, network):
    spec = NETWORKS[network]
    threads(spec["threads"])
    x, is_ref = spec["data"]()
    steps = 2 * spec["steps"]
    cfg = RatioTrainConfig(steps=steps, batch_size=256)
    torch.manual_seed(0)
    model = spec["ratio"](True)

    def run():
        train_ratio(model, x[~is_ref], x[is_ref], cfg, torch.Generator().manual_seed(0))

    benchmark.group = "ratio training"
    benchmark.extra_info.update(items=steps * 2 * cfg.batch_size, unit="samples", network=network,
                                threads=spec["threads"])
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


@pytest.mark.skipif(not HAVE_EVALUATOR, reason="tiwbench.data.evaluator not present")
def test_evaluator_features(benchmark, threads):
    from tiwbench.data.evaluator import EvalCNN, batched

    threads(2)
    torch.manual_seed(0)
    net = EvalCNN(in_channels=1, resolution=8).eval()
    x = torch.randn(4096, 1, 8, 8)
    benchmark.group = "evaluator features"
    benchmark.extra_info.update(items=len(x), unit="images", resolution=8)
    benchmark.pedantic(lambda: batched(net.features, x, batch_size=1024), rounds=3, warmup_rounds=1)
