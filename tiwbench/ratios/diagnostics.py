"""Diagnostics of a ratio model per σ band: accuracy and calibration of d, its clip rate and, against
a closed form, the errors of log w_σ, w_σ and the correction σ²∇log w_σ (what the ratio study aggregates)."""

from __future__ import annotations

import math

import torch

from tiwbench.diffusion.precond import expand_like

SIGMA_BANDS = ((0.002, 0.05), (0.05, 0.2), (0.2, 1.0), (1.0, 5.0), (5.0, 80.0))


@torch.no_grad()
def ratio_diagnostics(model, bias: torch.Tensor, ref: torch.Tensor, generator: torch.Generator,
                      exact=None, n: int = 2000, device="cpu") -> list[dict]:
    """Per σ band: balanced accuracy and ECE of d, the clip rate and, given the exact ratio, the
    mean squared errors of log w_σ, w_σ and the correction σ²∇log w_σ on D_bias samples (the estimation
    error the paper's Fig. 2 reports), each with its signal (``*_norm``: the mean square of log w, of
    w − 1 and of the exact correction) so that errors read relative to it."""
    out = []
    bands = SIGMA_BANDS if model.time_dependent else ((0.0, 0.0),)  # a clean classifier sees σ = 0
    for lo, hi in bands:
        i_ref = torch.randint(len(ref), (n,), generator=generator)
        i_bias = torch.randint(len(bias), (n,), generator=generator)
        y = torch.cat([ref[i_ref], bias[i_bias]]).to(device)
        if hi > 0:
            sigma = (torch.rand(2 * n, generator=generator) * math.log(hi / lo) + math.log(lo)).exp().to(device)
        else:
            sigma = torch.zeros(2 * n, device=device)
        x = y + expand_like(sigma, y) * torch.randn(y.shape, generator=generator).to(device)
        label = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
        logit = model.logit(x, sigma).float()
        d = torch.sigmoid(logit)
        acc = float(((d > 0.5).float() == label).float().mean())
        # ECE with 10 equal-width bins of confidence in the predicted class
        conf = torch.where(d > 0.5, d, 1 - d)
        correct = ((d > 0.5).float() == label).float()
        bins = (conf * 10).clamp(max=9.999).long()
        ece = 0.0
        for k in range(10):
            m = bins == k
            if m.any():
                ece += float(m.float().mean() * (conf[m].mean() - correct[m].mean()).abs())
        row = {"sigma_lo": lo, "sigma_hi": hi, "accuracy": acc, "ece": ece,
               "clip_rate": float((logit.abs() > model.logit_max).float().mean())}
        if exact is not None:
            xb, sb = x[n:], sigma[n:]
            lmax = model.logit_max
            log_w_hat = logit[n:].double().clamp(-lmax, lmax)
            log_w = exact.logit(xb.double(), sb.double()).double().clamp(-lmax, lmax)
            w_hat, w = log_w_hat.exp(), log_w.exp()
            row["ratio_mse"] = float(((w_hat - w) ** 2).mean())
            row["ratio_norm"] = float(((w - 1) ** 2).mean())
            row["log_ratio_mse"] = float(((log_w_hat - log_w) ** 2).mean())
            row["log_ratio_norm"] = float((log_w**2).mean())
            if model.time_dependent:
                # what TIW-DSM's target actually uses: the shift σ²∇log w, error in squared norm
                _, g_hat = model.log_ratio_and_grad(xb, sb)
                _, g = exact.log_ratio_and_grad(xb.double(), sb.double())
                s2 = expand_like(sb.double(), g) ** 2
                row["shift_mse"] = float(((s2 * (g_hat.double() - g)) ** 2).flatten(1).sum(1).mean())
                row["shift_norm"] = float(((s2 * g) ** 2).flatten(1).sum(1).mean())
        out.append(row)
    return out
