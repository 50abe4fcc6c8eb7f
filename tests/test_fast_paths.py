"""Guards of the fast training step: each test fails when its fast path is lost, not only when the
numbers change (tests/test_fast_step.py checks that the fast paths compute the same method)."""

import collections

import pytest
import torch
from oplog import OpLog
from torch.nn import functional as F

from tiwbench.config import TrainConfig
from tiwbench.diffusion.losses import Batch, dsm_loss
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.diffusion.unet import GroupNorm, ImageDiscriminator, UNet
from tiwbench.ratios.discriminator import LearnedRatio
from tiwbench.registry import METHODS
from tiwbench.training.loop import train_score

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _small_kernels_one_thread(one_thread):
    """Small kernels: a second thread only waits on the neighbours' load of a shared machine."""


def _unet(**kw):
    torch.manual_seed(0)
    return UNet(in_channels=3, resolution=8, channels=32, channel_mult=(1, 2), attn_resolutions=(4,), **kw)


def test_attention_runs_through_scaled_dot_product_attention():
    """One fused attention kernel per attention layer (four here: at 4×4 in the encoder, the middle and
    the decoder), and no softmax or batched matmul of an attention written out by hand. (On NCHW memory
    the CPU's fused kernel declines the strided heads and torch falls back to that math itself.)"""
    net = _unet().eval().to(memory_format=CL)  # as training runs it on CUDA (train.channels_last)
    layers = sum(m.__class__.__name__ == "Attention" for m in net.modules())
    with torch.no_grad(), OpLog() as log:
        net(torch.randn(2, 3, 8, 8).contiguous(memory_format=CL), torch.zeros(2))
    fused = sum(n for op, n in log.ops.items() if "scaled_dot_product" in op)
    assert layers == 4 and fused == layers, dict(log.ops)
    assert not {"_softmax", "bmm", "baddbmm"} & set(log.ops)


def _toy_ratio():
    torch.manual_seed(1)
    return LearnedRatio(MLP(2, out_dim=1, hidden=16, depth=2), 0.5).eval()


def test_train_compile_compiles_the_score_and_the_ratio_network(monkeypatch):
    """train.compile: dynamo hands each network's graphs to the backend (counted per network)."""
    graphs = collections.Counter()
    compile_ = torch.nn.Module.compile

    def counted(self, **kw):
        def backend(gm, example_inputs):
            graphs[id(self)] += 1
            return gm.forward  # run the captured graph as it is

        return compile_(self, backend=backend, **kw)

    monkeypatch.setattr(torch.nn.Module, "compile", counted)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x, is_ref = torch.randn(200, 2, generator=g), torch.rand(200, generator=g) < 0.2
    torch.manual_seed(0)
    net, ratio = EDMPrecond(MLP(2, hidden=16, depth=2), 0.5), _toy_ratio()
    cfg = TrainConfig(steps=2, batch_size=16, check_every=2, compile=True)
    train_score(METHODS.get("tiw_dsm")(), net, x, is_ref, ratio, cfg, torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    assert graphs[id(net)] >= 1 and graphs[id(ratio.net)] >= 1, dict(graphs)


@pytest.mark.parametrize("method", ["tiw_dsm", "tiw_dsm_nocorr", "iw_dsm"])
def test_unet_ratio_model_sees_one_shape_all_run(method):
    """The image discriminator gets the whole batch every step (D_ref rows masked afterwards), never the
    step's D_bias subset, whose size changes from step to step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    is_ref = torch.rand(64, generator=g) < 0.3
    torch.manual_seed(0)
    net = EDMPrecond(UNet(in_channels=1, resolution=8, channels=8, channel_mult=(1, 2)), 0.5)
    m = METHODS.get(method)()
    ratio = LearnedRatio(ImageDiscriminator(in_channels=1, resolution=8, channels=8, time=m.ratio == "time"),
                         0.5, time_dependent=m.ratio == "time").eval()
    shapes = []
    ratio.net.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    refs = []
    draw = Batch.draw

    def logged_draw(y, is_ref_rows, *a, **kw):
        refs.append(int(is_ref_rows.sum()))
        return draw(y, is_ref_rows, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Batch, "draw", logged_draw)
        train_score(m, net, x, is_ref, ratio, TrainConfig(steps=6, batch_size=16, check_every=6),
                    torch.Generator().manual_seed(0))
    assert len(set(refs)) > 1  # the D_bias count varied: a per-step subset would have changed shape
    assert len(shapes) == 6 and set(shapes) == {(16, 1, 8, 8)}


def test_bf16_autocast_step_copies_no_feature_map():
    """A DSM step of a channels-last U-Net under bf16 autocast, forward and backward: no copy, cast or
    layout conversion of a feature map. What remains, counted: the network's input cast to bf16 at the
    stem convolution, the fp32 loss's gradient cast to bf16 at the output convolution and one clone of
    the image-sized input gradient (3 channels: 1/32 of the first feature map here, 1/256 in the paper
    U-Net); per-(sample, group) factors of the group norm; the parameters' casts (autocast's)."""
    net = EDMPrecond(_unet(), 0.5).to(memory_format=CL)
    b = 5  # odd: no parameter's leading dimension equals it
    y = torch.randn(b, 3, 8, 8).contiguous(memory_format=CL)
    batch = Batch.draw(y, torch.zeros(b, dtype=torch.bool), torch.Generator().manual_seed(0))
    with OpLog() as log:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = dsm_loss(net, batch)
        loss.reshape(b, -1).sum(dim=1).mean().backward()
    assert log.ops["native_group_norm"] == 0 and log.ops["contiguous"] == 0
    per_sample = [(op, s) for op, s, _ in log.copies if len(s) == 4 and s[0] == b]
    images = [(op, s) for op, s in per_sample if s == (b, 3, 8, 8)]
    factors = [(op, s) for op, s in per_sample if s[1] == 1 and s[2] * s[3] <= 64 * 4]  # [B, 1, groups, ≤4]
    feature_maps = [c for c in per_sample if c not in images and c not in factors]
    assert not feature_maps, f"feature-map copies in a bf16 step: {collections.Counter(feature_maps)}"
    assert sorted(op for op, _ in images) == ["_to_copy", "_to_copy", "clone"]
    assert log.ops["var_mean"] > 0  # the NHWC group norm ran


def _ideal_and_fast(offset: float, seed: int = 0):
    """bf16 group norm of a bf16 input whose groups have mean ``offset`` (in units of their spread):
    its relative error against float64, and that of float32 arithmetic rounded to bf16 once at the end."""
    torch.manual_seed(seed)
    gn = GroupNorm(8, 64, eps=1e-6)
    with torch.no_grad():
        gn.weight.normal_(1, 0.3)
        gn.bias.normal_(0, 0.3)
    x = (torch.randn(4, 64, 16, 16) + offset).bfloat16().contiguous(memory_format=CL)
    with torch.no_grad():
        ref = F.group_norm(x.double(), 8, gn.weight.double(), gn.bias.double(), 1e-6)
        fast = gn(x)
        rounded = F.group_norm(x.float(), 8, gn.weight, gn.bias, 1e-6).bfloat16()

    def err(out):
        return float((out.double() - ref).norm() / ref.norm())

    assert fast.dtype == torch.bfloat16 and fast.is_contiguous(memory_format=CL)
    return err(fast), err(rounded)


@pytest.mark.parametrize("offset", [0.0, 4.0, 16.0])
def test_group_norm_bf16_path_against_float32(offset):
    """Within 2.5× the error of exact arithmetic rounded to bf16 once (measured: 1.5–1.8×), however large
    the group mean: the mean is taken out in two passes (one pass in bf16: 4.7× at offset 4, 11× at 16)."""
    fast, rounded = _ideal_and_fast(offset)
    assert rounded < 2.5e-3  # bf16's half ulp, 2⁻⁹ ≈ 2e-3, sets the scale
    assert fast < 2.5 * rounded, (fast, rounded)


def test_cpu_fused_attention_flops_are_counted_by_the_formula():
    """The flop counter's own table counts the CPU's fused kernel as 0; the bench's counter fills in
    4·B·heads·L²·d forward (QKᵀ and AV, 2·B·heads·L²·d each) and five such matmuls backward (QKᵀ
    recomputed, dV, dP, dQ, dK), the formulas torch uses for its CUDA kernels."""
    from tiwbench.sweep.step_bench import flop_counter

    b, heads, tokens, d = 2, 2, 16, 64
    q = torch.randn(b, heads, tokens, d, requires_grad=True)
    with flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * b * heads * tokens**2 * d
    with flop_counter() as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 5 * 2 * b * heads * tokens**2 * d
