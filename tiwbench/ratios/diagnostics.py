"""Diagnostics of a ratio model per σ band: accuracy and calibration of d, its clip rate and, against
a closed form, the errors of log w_σ, w_σ and the correction σ²∇log w_σ (what the ratio study aggregates).

Two targets where the data allow: the truth (``exact``: the true proportions over p_bias) and the best ratio
D_ref allows (``attainable``: the truth re-weighted to D_ref's empirical proportions, what
``exact_empirical`` uses). No estimator learning from D_ref can know more than D_ref's proportions, so
the error against the attainable target is what ranks estimators; the attainable target's own distance to
the truth (``*_gap``) is the part of the error against the truth that no estimator can remove."""

from __future__ import annotations

import math

import torch

from tiwbench.diffusion.precond import expand_like

SIGMA_BANDS = ((0.002, 0.05), (0.05, 0.2), (0.2, 1.0), (1.0, 5.0), (5.0, 80.0))


@torch.no_grad()
def ratio_diagnostics(model, bias: torch.Tensor, ref: torch.Tensor, generator: torch.Generator,
                      exact=None, n: int = 2000, device="cpu", attainable=None) -> list[dict]:
    """Per σ band: balanced accuracy and ECE of d, the clip rate and, given the exact ratio, the
    mean squared errors of log w_σ, w_σ and the correction σ²∇log w_σ on D_bias samples (the estimation
    error the paper's Fig. 2 reports), each with its signal (``*_norm``: the mean square of log w, of
    w − 1 and of the exact correction) so that errors read relative to it. Given also the attainable
    ratio, the same errors against it (``*_mse_att``) and its own against the exact one (``*_gap``), at the
    same points; the signals stay the truth's, so the columns share one scale."""
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
            xb, sb, td, lmax = x[n:], sigma[n:], model.time_dependent, model.logit_max
            estimate = _estimate(model, xb, sb, logit[n:])
            truth = _target(exact, xb, sb, lmax, td)
            row.update(_errors(estimate, truth))
            if attainable is not None:
                best = _target(attainable, xb, sb, lmax, td)
                row.update({f"{k}_att": v for k, v in _errors(estimate, best).items() if k.endswith("_mse")})
                gap = _errors(best, truth)  # what a perfect estimator of the attainable ratio scores
                row.update({k.replace("_mse", "_gap"): v for k, v in gap.items() if k.endswith("_mse")})
        out.append(row)
    return out


def _target(target, xb: torch.Tensor, sb: torch.Tensor, lmax: float, time_dependent: bool):
    """A closed-form target's clipped log w_σ and, time-dependent, its correction σ²∇log w_σ."""
    log_w = target.logit(xb.double(), sb.double()).double().clamp(-lmax, lmax)
    if not time_dependent:
        return log_w, None
    _, g = target.log_ratio_and_grad(xb.double(), sb.double())
    return log_w, expand_like(sb.double(), g) ** 2 * g


def _estimate(model, xb: torch.Tensor, sb: torch.Tensor, logit: torch.Tensor):
    """The model's clipped log w_σ and, time-dependent, the correction σ²∇log w_σ it implies."""
    log_w = logit.double().clamp(-model.logit_max, model.logit_max)
    if not model.time_dependent:
        return log_w, None
    _, g = model.log_ratio_and_grad(xb, sb)
    return log_w, expand_like(sb.double(), g) ** 2 * g.double()


def _errors(estimate, target) -> dict:
    """Mean squared errors of an estimate's (log w, correction) against a target's, of w too, with the
    target's signals (the mean square of its log w, of its w − 1 and of its correction)."""
    (log_w_hat, shift_hat), (log_w, shift) = estimate, target
    w_hat, w = log_w_hat.exp(), log_w.exp()
    row = {"ratio_mse": float(((w_hat - w) ** 2).mean()), "ratio_norm": float(((w - 1) ** 2).mean()),
           "log_ratio_mse": float(((log_w_hat - log_w) ** 2).mean()), "log_ratio_norm": float((log_w**2).mean())}
    if shift is not None:
        # what TIW-DSM's target actually uses: the shift σ²∇log w, error in squared norm
        row["shift_mse"] = float(((shift_hat - shift) ** 2).flatten(1).sum(1).mean())
        row["shift_norm"] = float((shift**2).flatten(1).sum(1).mean())
    return row
