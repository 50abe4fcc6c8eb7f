"""Image networks: the U-Net score model F(x_in, c_noise) and the conv discriminator ℓ(x_in, c_noise).

EDM's preconditioning is applied outside (EDMPrecond, LearnedRatio), so both see unit-scale inputs
and c_noise = ln σ / 4 of shape [B]. One code path covers a tiny 8×8 CPU net (channels 32,
channel_mult (1, 2), one block per level) and a DDPM++-like paper net (channels 128,
channel_mult (2, 2, 2), four blocks per level, attention at 16×16, ≈ 50 M parameters).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from tiwbench.diffusion.mlp import FourierEmbedding


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that keeps a channels-last input channels-last, without a copy.

    torch's CUDA kernel needs NCHW and converts a channels-last input (a copy in, a copy out, and
    the next convolution converts back). Here the statistics are taken on a view of the NHWC memory:
    [B, H·W, groups, C/groups], reduced over H·W and C/groups.

    A bf16 input (under autocast) stays bf16: casting the activation to float32 and back would cost two
    activation-sized copies a call (forward and backward). The reductions accumulate in float32 inside
    their kernels; the group mean is taken out in two passes (a bf16-rounded mean, then the small
    remainder), so a large mean costs no precision; only per-(sample, channel) factors are cast.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        b, c, h, w = x.shape
        v = x.permute(0, 2, 3, 1).reshape(b, h * w, self.num_groups, c // self.num_groups)
        weight, bias = self.weight.reshape(self.num_groups, -1), self.bias.reshape(self.num_groups, -1)
        if x.dtype in (torch.bfloat16, torch.float16):
            return self._low_precision(v, weight, bias).reshape(b, h, w, c).permute(0, 3, 1, 2)
        v = v.float()
        var, mean = torch.var_mean(v, dim=(1, 3), keepdim=True, correction=0)
        out = (v - mean) * torch.rsqrt(var + self.eps) * weight.float() + bias.float()
        return out.to(x.dtype).reshape(b, h, w, c).permute(0, 3, 1, 2)  # a channels-last view

    def _low_precision(self, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        dims = (1, 3)
        d = v - v.mean(dim=dims, keepdim=True)  # bf16 out, float32 accumulation (CPU and CUDA kernels)
        var, rest = torch.var_mean(d, dim=dims, keepdim=True, correction=0)  # rest: what the rounded mean left
        scale = torch.rsqrt(var.float() + self.eps) * weight.float()  # [B, 1, groups, C/groups]
        shift = bias.float() - rest.float() * scale
        return torch.addcmul(shift.to(v.dtype), d, scale.to(v.dtype))


def group_norm(ch: int) -> GroupNorm:
    """32 groups as in DDPM++, fewer for the narrow nets of the CPU profiles (≥ 4 channels a group)."""
    groups = min(32, max(1, ch // 4))
    while ch % groups:
        groups -= 1
    return GroupNorm(groups, ch, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Residual branches and outputs start at zero, so a fresh net is the identity (stable start)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN → SiLU → conv, + time embedding as scale/shift, GN → SiLU → dropout → conv, + skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None, dropout: float = 0.0,
                 down: bool = False, up: bool = False):
        super().__init__()
        self.down, self.up = down, up
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * cout) if emb_dim else None
        self.norm1 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout or down or up else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return F.avg_pool2d(x, 2)
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = self.norm1(h)
        if self.affine is not None:
            scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv1(self.dropout(F.silu(h)))
        skip = self._resample(x)
        if self.skip is not None:
            skip = self.skip(skip)
        return (skip + h) / math.sqrt(2)  # keeps the activation scale constant over depth


class Attention(nn.Module):
    """Multi-head self-attention over pixels (64 channels a head), residual with a zero-init output."""

    def __init__(self, ch: int):
        super().__init__()
        self.heads = max(1, ch // 64)
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # pixels as tokens: [B, H·W, (3, heads, C/heads)], a view when x is channels-last
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, H·W, C/heads]
        out = F.scaled_dot_product_attention(q, k, v)  # fused softmax(QKᵀ/√d)V
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # back as a channels-last view
        return (x + self.proj(out)) / math.sqrt(2)


class Level(nn.Module):
    """A residual block with optional attention: one unit of the U-Net's encoder or decoder."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None, dropout: float, attn: bool, **resample):
        super().__init__()
        self.block = ResBlock(cin, cout, emb_dim, dropout, **resample)
        self.attn = Attention(cout) if attn else None

    def forward(self, x, emb):
        x = self.block(x, emb)
        return self.attn(x) if self.attn is not None else x


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise followed by a two-layer MLP (emb_dim = 4 · channels)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fourier = FourierEmbedding(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, 4 * channels))
        self.dim = 4 * channels

    def forward(self, c_noise: torch.Tensor, batch: int) -> torch.Tensor:
        return F.silu(self.mlp(self.fourier(c_noise.reshape(-1).expand(batch))))


class UNet(nn.Module):
    """``forward(x_in, c_noise) -> same shape as x_in``.

    Encoder: per level ``num_blocks`` residual blocks, then a down-sampling block (not after the
    last level); every output is kept as a skip. Middle: block, attention, block. Decoder: per level
    ``num_blocks + 1`` blocks, each consuming one skip, then an up-sampling block. Attention follows
    every block at a resolution listed in ``attn_resolutions``.
    """

    def __init__(self, in_channels: int = 1, resolution: int = 8, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2), dropout: float = 0.0, num_blocks: int = 1,
                 attn_resolutions: tuple[int, ...] = ()):
        super().__init__()
        if resolution % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(channel_mult) - 1} "
                             f"(one halving per extra channel_mult entry); shorten channel_mult")
        self.emb = TimeEmbedding(channels)
        emb_dim = self.emb.dim
        self.stem = nn.Conv2d(in_channels, channels * channel_mult[0], 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [channels * channel_mult[0]]
        cur, res = skips[0], resolution
        for i, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.enc.append(Level(cur, channels * mult, emb_dim, dropout, res in attn_resolutions))
                cur = channels * mult
                skips.append(cur)
            if i < len(channel_mult) - 1:
                self.enc.append(Level(cur, cur, emb_dim, dropout, False, down=True))
                res //= 2
                skips.append(cur)
        self.mid = nn.ModuleList([Level(cur, cur, emb_dim, dropout, True), Level(cur, cur, emb_dim, dropout, False)])
        self.dec = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.dec.append(Level(cur + skips.pop(), channels * mult, emb_dim, dropout, res in attn_resolutions))
                cur = channels * mult
            if i > 0:
                self.dec.append(Level(cur, cur, emb_dim, dropout, False, up=True))
                res *= 2
        assert not skips
        self.feature_dim = channels * channel_mult[-1]  # the bottleneck's width: what `features` returns
        self.kwargs = {"in_channels": in_channels, "resolution": resolution, "channels": channels,
                       "channel_mult": list(channel_mult), "dropout": dropout, "num_blocks": num_blocks,
                       "attn_resolutions": list(attn_resolutions)}
        self.out = nn.Sequential(group_norm(cur), nn.SiLU(), zero_init(nn.Conv2d(cur, in_channels, 3, padding=1)))

    def _encode(self, x_in: torch.Tensor, c_noise: torch.Tensor):
        emb = self.emb(c_noise, len(x_in))
        h = self.stem(x_in)
        skips = [h]
        for layer in self.enc:
            h = layer(h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        return h, skips, emb

    def features(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """The bottleneck's activations at (x_in, c_noise), pooled over pixels ([B, feature_dim]): what a frozen
        trunk hands a ratio head (the Discriminator Guidance recipe reads a noise-conditional encoder's)."""
        h, _, _ = self._encode(x_in, c_noise)
        return F.silu(h).mean(dim=(2, 3))

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h, skips, emb = self._encode(x_in, c_noise)
        for layer in self.dec:
            if not (layer.block.up):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb)
        return self.out(h)


class ImageDiscriminator(nn.Module):
    """``forward(x_in, c_noise) -> [B, 1]`` logits of P(reference | x, σ).

    A conv encoder of residual blocks (time-conditioned when ``time``), halving the resolution down
    to 4×4, then global average pooling and a linear head. With ``time=False`` it is the clean-image
    classifier of IW-DSM and ignores c_noise.

    ``feature_extractor`` (paper scale, optional): a network with ``features(x)`` and ``feature_dim``
    (the evaluator's classifier, loaded by :func:`tiwbench.data.evaluator.load_classifier`). Its pooled
    features, frozen, join the encoder's before the head.
    """

    def __init__(self, in_channels: int = 1, resolution: int = 8, channels: int = 32, time: bool = True,
                 feature_extractor: nn.Module | None = None, sigma_data: float = 0.5):
        super().__init__()
        self.time = time
        self.sigma_data = sigma_data
        self.emb = TimeEmbedding(channels) if time else None
        emb_dim = self.emb.dim if time else None
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks, cur, res = [], channels, resolution
        while True:
            blocks.append(ResBlock(cur, min(cur * 2, 4 * channels), emb_dim))
            cur = min(cur * 2, 4 * channels)
            if res <= 4 or res % 2:
                break
            blocks.append(ResBlock(cur, cur, emb_dim, down=True))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        self.norm = group_norm(cur)
        self.extractor = None
        feat = cur
        if feature_extractor is not None:
            self.extractor = feature_extractor.requires_grad_(False).eval()
            feat += self.extractor.feature_dim
        self.head = nn.Sequential(nn.Linear(feat + (emb_dim or 0), 2 * channels), nn.SiLU(),
                                  nn.Linear(2 * channels, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.extractor is not None:
            self.extractor.eval()  # frozen: its norm/dropout layers stay in inference mode
        return self

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb(c_noise, len(x_in)) if self.time else None
        h = self.stem(x_in)
        for block in self.blocks:
            h = block(h, emb)
        parts = [F.silu(self.norm(h)).mean(dim=(2, 3))]
        if self.extractor is not None:
            # x_in = x / sqrt(σ² + σ_data²); times σ_data it is the [-1, 1] image at σ = 0, as trained
            parts.append(self.extractor.features(x_in * self.sigma_data))
        if emb is not None:
            parts.append(emb)
        return self.head(torch.cat(parts, dim=1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

