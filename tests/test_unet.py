"""Image networks: shapes, parameter counts against closed forms, batch independence, conditioning,
and the discriminator's frozen feature extractor loaded from a saved checkpoint."""

from __future__ import annotations

import pytest
import torch

from tiwbench.data.evaluator import EvalCNN, load_classifier, save_classifier
from tiwbench.diffusion.unet import ImageDiscriminator, ResBlock, UNet, count_parameters
from tiwbench.ratios.discriminator import make_ratio


def test_unet_output_shape_tiny_and_with_attention():
    torch.manual_seed(0)
    for c, res, mult, nb, attn in [(1, 8, (1, 2), 1, ()), (3, 16, (1, 2, 2), 2, (8,))]:
        net = UNet(c, res, 16, mult, 0.0, num_blocks=nb, attn_resolutions=attn)
        x = torch.randn(3, c, res, res)
        out = net(x, torch.randn(3))
        assert out.shape == x.shape


def test_unet_rejects_indivisible_resolution():
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, 6, 16, (1, 2, 2))


def test_resblock_parameter_count_closed_form():
    cin, cout, emb = 16, 32, 64
    block = ResBlock(cin, cout, emb)
    expected = (2 * cin  # GroupNorm affine
                + 9 * cin * cout + cout  # conv0
                + emb * 2 * cout + 2 * cout  # time scale/shift
                + 2 * cout  # GroupNorm
                + 9 * cout * cout + cout  # conv1
                + cin * cout + cout)  # 1×1 skip
    assert count_parameters(block) == expected


@pytest.mark.parametrize("resolution", [32, 64])
def test_ddpmpp_like_config_size(resolution):
    # EDM's CIFAR-10 DDPM++ shape: 128 channels, mult (2, 2, 2), attention at 16×16 (constructed only)
    net = UNet(3, resolution, 128, (2, 2, 2), 0.13, num_blocks=3, attn_resolutions=(16,))
    n = count_parameters(net)
    assert 35e6 <= n <= 55e6, n
    n_attn = sum(type(m).__name__ == "Attention" for m in net.modules())
    assert n_attn == 3 + 4 + 1  # after each encoder (3) and decoder (4) block at 16×16, and the middle


def _perturb(net):
    """Move every parameter off its (partly zero) initialisation, so every path is live."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def test_unet_batch_independent_and_time_conditioned():
    net = _perturb(UNet(1, 8, 16, (1, 2))).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.randn(4)
    full = net(x, t)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)  # GroupNorm: no batch coupling
    assert not torch.allclose(net(x, t), net(x, t + 1.0))


def test_discriminator_shapes_and_time_flag():
    d_time = _perturb(ImageDiscriminator(1, 8, 16, time=True)).eval()
    d_clean = _perturb(ImageDiscriminator(3, 32, 16, time=False)).eval()
    x = torch.randn(5, 1, 8, 8)
    assert d_time(x, torch.zeros(5)).shape == (5, 1)
    assert not torch.allclose(d_time(x, torch.zeros(5)), d_time(x, torch.ones(5)))
    y = torch.randn(5, 3, 32, 32)
    out = d_clean(y, torch.zeros(5))
    assert out.shape == (5, 1)
    torch.testing.assert_close(out, d_clean(y, torch.full((5,), 3.0)))  # the clean classifier ignores σ


def test_discriminator_frozen_feature_extractor(tmp_path):
    torch.manual_seed(0)
    ext = EvalCNN(1, 8, 10, width=8)
    path = tmp_path / "ext.pt"
    save_classifier(ext, path, {"accuracy": None})
    d = ImageDiscriminator(1, 8, 16, time=True, feature_extractor=load_classifier(str(path)))
    for k, v in ext.state_dict().items():
        torch.testing.assert_close(d.extractor.state_dict()[k], v)
    assert not any(p.requires_grad for p in d.extractor.parameters())
    trainable = sum(p.numel() for p in d.parameters() if p.requires_grad)
    plain = count_parameters(ImageDiscriminator(1, 8, 16, time=True))
    assert trainable == plain + ext.feature_dim * 32  # only the head's input grows (head width 2·16)
    d.train()
    assert not d.extractor.training
    out = d(torch.randn(4, 1, 8, 8), torch.zeros(4))
    assert out.shape == (4, 1)
    out.sum().backward()
    assert all(p.grad is None for p in d.extractor.parameters())


def test_missing_extractor_checkpoint_is_data_error(tmp_path):
    from tiwbench.config import RatioConfig
    from tiwbench.data.base import DataError
    from tiwbench.data.digits import DigitsLT

    with pytest.raises(DataError, match="sidecar"):
        make_ratio(DigitsLT(), RatioConfig(channels=16, feature_extractor=str(tmp_path / "none.pt")), True)


def test_networks_build_image_models_from_config():
    from tiwbench.config import RatioConfig, TrainConfig
    from tiwbench.data.digits import DigitsLT
    from tiwbench.training.denoiser import make_denoiser

    ds = DigitsLT()
    den = make_denoiser(ds, TrainConfig(channels=16, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[4]))
    x = torch.randn(2, 1, 8, 8)
    assert den(x, torch.full((2,), 0.5)).shape == x.shape
    ratio = make_ratio(ds, RatioConfig(channels=16), time_dependent=True)
    log_w, grad = ratio.log_ratio_and_grad(x, torch.full((2,), 0.5))
    assert log_w.shape == (2,) and grad.shape == x.shape
