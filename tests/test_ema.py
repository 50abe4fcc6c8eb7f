"""The EMA of the score network, with EDM's ramp-up, through the training loop itself."""

import pytest
import torch

from tiwbench.config import TrainConfig
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond
from tiwbench.registry import METHODS
from tiwbench.training.loop import train_score


def _edm_beta(step, batch_size, halflife_steps, rampup):
    """EDM's training loop, in images: half-life min(H, cur_nimg · ratio), β = 0.5^(B / half-life)."""
    halflife_nimg = halflife_steps * batch_size
    if rampup is not None:
        halflife_nimg = min(halflife_nimg, step * batch_size * rampup)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


@pytest.mark.parametrize("rampup", [0.05, 0.5, None])
def test_ema_weights_follow_edm_formula(rampup):
    torch.manual_seed(0)
    steps, halflife, bs = 25, 10, 16
    net = EDMPrecond(MLP(2, hidden=8, depth=1), sigma_data=0.5)
    flat = lambda m: torch.cat([p.detach().flatten().clone() for p in m.parameters()])  # noqa: E731
    thetas = [flat(net)]
    cfg = TrainConfig(steps=steps, batch_size=bs, lr=1e-2, lr_warmup=1, ema_halflife=halflife,
                      ema_rampup=rampup or 0.0, grad_clip=0.0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ema, _ = train_score(METHODS.get("dsm_obs")(), net, x, torch.zeros(64, dtype=torch.bool), None, cfg,
                         torch.Generator().manual_seed(2), progress=lambda done, total: thetas.append(flat(net)))
    betas = [_edm_beta(t, bs, halflife, rampup) for t in range(steps)]
    # weight of θ_t in the EMA after all steps: (1 − β_{t−1}) Π_{s ≥ t} β_s, and Π_s β_s for θ_0
    coef = []
    for t in range(steps + 1):
        c = 1.0 if t == 0 else 1 - betas[t - 1]
        for b in betas[t:]:
            c *= b
        coef.append(c)
    assert abs(sum(coef) - 1) < 1e-9
    expected = sum(c * th for c, th in zip(coef, thetas))
    assert torch.allclose(flat(ema), expected, atol=1e-6)
    init_share = coef[0]
    if rampup is None:
        assert abs(init_share - 0.5 ** (steps / halflife)) < 1e-12  # the initial weights linger
    else:
        assert init_share == 0.0  # the first update copies the network, as EDM's loop does
