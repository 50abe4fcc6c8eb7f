"""The fast training step computes the same method: channels-last U-Net, fused attention, group norm
on NHWC memory, the ratio model on the whole batch, draws from a device generator, torch.compile."""

import math
import os

import pytest
import torch
from oplog import OpLog
from torch.nn import functional as F

from tiwbench.config import TrainConfig
from tiwbench.diffusion.losses import Batch, dsm_loss
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond, expand_like
from tiwbench.diffusion.sampler import edm_sampler
from tiwbench.diffusion.unet import Attention, GroupNorm, UNet
from tiwbench.ratios.discriminator import LearnedRatio
from tiwbench.registry import METHODS
from tiwbench.training.loop import device_generator, train_score
from tiwbench.training.methods import ratio_on_batch

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _small_kernels_one_thread(one_thread):
    """Small kernels: a second thread only waits on the neighbours' load of a shared machine."""


def _randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():  # zero-init branches would hide differences
        p.data = torch.randn(p.shape, generator=g) * 0.2
    return module


def test_attention_is_softmax_qkt_v():
    torch.manual_seed(0)
    att = _randomised(Attention(128)).eval()  # two heads of 64
    x = torch.randn(2, 128, 4, 4)
    b, c, h, w = x.shape
    qkv = att.qkv(att.norm(x)).reshape(b, 3, 2, 64, h * w)
    out = torch.empty(b, 2, 64, h * w)
    for i in range(b):
        for head in range(2):
            q, k, v = (qkv[i, j, head].T for j in range(3))  # [tokens, 64]
            a = torch.softmax(q @ k.T / math.sqrt(64), dim=-1)
            out[i, head] = (a @ v).T
    expected = (x + att.proj(out.reshape(b, c, h, w))) / math.sqrt(2)
    torch.testing.assert_close(att(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(att(x.contiguous(memory_format=CL)), expected, rtol=1e-5, atol=1e-5)


def test_group_norm_on_nhwc_memory_equals_torch():
    gn = _randomised(GroupNorm(4, 16, eps=1e-6))
    x = torch.randn(3, 16, 5, 6) * 3 + 1
    ref = F.group_norm(x, 4, gn.weight, gn.bias, 1e-6)
    out = gn(x.contiguous(memory_format=CL))
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_channels_last_unet_equals_contiguous_and_never_copies():
    torch.manual_seed(0)
    net = _randomised(UNet(in_channels=3, resolution=8, channels=32, channel_mult=(1, 2),
                           attn_resolutions=(4,))).eval()
    x, c = torch.randn(4, 3, 8, 8), torch.randn(4)
    ref = net(x, c)
    net.to(memory_format=CL)
    xl = x.contiguous(memory_format=CL)
    with OpLog() as log:
        out = net(xl, c)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    copying = ("clone", "contiguous", "copy_", "_to_copy", "native_group_norm")
    copies = {k: n for k, n in log.ops.items() if k in copying}
    assert not copies, f"layout copies inside the channels-last U-Net: {copies}"
    assert log.ops["var_mean"] > 0  # the NHWC group norm ran


def _toy_ratio(seed=0):
    torch.manual_seed(seed)
    return LearnedRatio(_randomised(MLP(2, out_dim=1, hidden=32, depth=2), seed), 0.5).eval()


def _batch(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch.draw(torch.randn(n, 2, generator=g), torch.arange(n) % 4 == 0, g)


def test_whole_batch_ratio_equals_the_d_bias_subset():
    """D_bias rows: the same log w and ∇log w as evaluating those rows alone; D_ref rows: 0, 0."""
    ratio, batch = _toy_ratio(), _batch()
    log_w, grad = ratio_on_batch(ratio, batch, grad=True)
    idx = batch.bias_idx
    sub_w, sub_g = ratio.log_ratio_and_grad(batch.x[idx], batch.sigma[idx])
    torch.testing.assert_close(log_w[idx], sub_w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad[idx], sub_g, rtol=1e-6, atol=1e-6)
    assert (log_w[batch.is_ref] == 0).all() and (grad[batch.is_ref] == 0).all()
    clean = ratio_on_batch(ratio, batch, inputs="y")
    torch.testing.assert_close(clean[idx], ratio.log_ratio(batch.y[idx], batch.sigma[idx]), rtol=1e-6, atol=1e-6)


def test_tiw_dsm_loss_equals_the_subset_formulation():
    torch.manual_seed(1)
    net = EDMPrecond(_randomised(MLP(2, hidden=32, depth=2), 1), 0.5)
    ratio, batch = _toy_ratio(), _batch()
    idx = batch.bias_idx
    lw, g = ratio.log_ratio_and_grad(batch.x[idx], batch.sigma[idx])
    weight = torch.ones(len(batch.y)).index_put((idx,), lw.exp())
    shift = torch.zeros_like(batch.y).index_put((idx,), expand_like(batch.sigma[idx], g) ** 2 * g)
    expected = dsm_loss(net, batch, weight=weight, target_shift=shift)
    torch.testing.assert_close(METHODS.get("tiw_dsm")().loss(net, batch, ratio), expected, rtol=1e-6, atol=1e-7)


def test_clip_rate_counts_d_bias_rows_only():
    ratio, batch = _toy_ratio(), _batch()
    ratio.logit_max = 0.0  # every row clips
    ratio_on_batch(ratio, batch, grad=True)
    assert int(ratio.seen) == int((~batch.is_ref).sum()) == int(ratio.clipped)


def _train(cfg, seed=0, net_seed=0):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 2, generator=g)
    is_ref = torch.rand(300, generator=g) < 0.2
    torch.manual_seed(net_seed)
    net = EDMPrecond(MLP(2, hidden=32, depth=2), 0.5)
    ema, info = train_score(METHODS.get("tiw_dsm")(), net, x, is_ref, _toy_ratio(), cfg,
                            torch.Generator().manual_seed(seed))
    return ema, info


def test_training_is_deterministic_per_device_and_seed():
    cfg = TrainConfig(steps=8, batch_size=32, check_every=4)
    a, ia = _train(cfg)
    b, ib = _train(cfg)
    c, _ = _train(cfg, seed=1)
    assert ia["final_loss"] == ib["final_loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_device_generator_is_the_given_one_on_its_device():
    g = torch.Generator().manual_seed(3)
    assert device_generator(g, "cpu") is g
    state = g.get_state()
    assert torch.equal(device_generator(g, torch.device("cpu")).get_state(), state)


def _compiled_vs_eager(backend, monkeypatch):
    cfg = TrainConfig(steps=6, batch_size=32, check_every=3, lr_warmup=1)
    _, eager = _train(cfg)
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_(self, backend=backend, **kw))
    torch._dynamo.reset()
    _, compiled = _train(TrainConfig(**{**cfg.__dict__, "compile": True}))
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)


def test_compiled_and_eager_losses_agree(monkeypatch):
    """train.compile: dynamo's graphs of the score and ratio nets (through AOT autograd, as
    inductor gets them) give the losses of eager mode. Inductor's code generation: the slow test."""
    _compiled_vs_eager("aot_eager", monkeypatch)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TIWBENCH_SLOW_TESTS"), reason="~90 s of C++ compilation on 2 cores; "
                    "set TIWBENCH_SLOW_TESTS=1")
def test_inductor_compiled_and_eager_losses_agree(monkeypatch):
    _compiled_vs_eager("inductor", monkeypatch)


def test_bf16_sampler_stays_close_to_float32():
    torch.manual_seed(0)
    net = EDMPrecond(_randomised(MLP(2, hidden=64, depth=2), 2), 0.5).eval()
    lat = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    full = edm_sampler(net, lat, 12)
    low = edm_sampler(net, lat, 12, dtype="bfloat16")
    assert low.dtype == torch.float32 and not torch.equal(low, full)  # bf16 really ran
    err = (low - full).norm(dim=1) / full.norm(dim=1).clamp_min(1e-3)
    assert err.median() < 0.05


def test_bad_sample_dtype_is_a_config_error(tmp_path):
    from tiwbench.config import ConfigError, load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndatasets: [toy2d]\nmethods: [dsm_obs]\nref_fracs: [0.1]\nseeds: [0]\n"
                     "profiles: {smoke: {toy2d: {sample: {dtype: float16}}}}\n")
    with pytest.raises(ConfigError, match="sample.dtype.*bfloat16"):
        load_suite(str(suite))
