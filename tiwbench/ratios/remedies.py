"""Ratio estimators aimed at TIW-DSM's correction σ²∇log w_σ (docs/ratios.md):

- ``trunk``: the paper's recipe (Discriminator Guidance style): a frozen noise-conditional trunk, here the
  observed-data denoiser that ``dlsm`` also uses (DSM on D_bias ∪ D_ref: no label that defines the bias), whose
  hidden features at (x_σ, σ) feed a small time-conditioned head trained by class-balanced BCE; its step count
  and its L2 strength are chosen on the held-out split. ``dlsm_trunk`` trains the same head by BCE + DLSM;
- ``discriminator_ensemble``: K discriminators, logits averaged, the mean divided by a temperature fitted on
  the held-out split;
- ``*_gated``: an estimator whose correction is used only below a noise level σ* chosen on held-out data,
  where the correction stops lowering the held-out denoising error of the class denoisers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from tiwbench.data.base import DataError
from tiwbench.diffusion.mlp import MLP
from tiwbench.diffusion.precond import EDMPrecond, expand_like
from tiwbench.ratios.discriminator import (
    ClipCountsOf,
    HeldOut,
    LearnedRatio,
    choose_ratio_steps,
    held_out_bce,
    train_ratio,
)
from tiwbench.ratios.estimators import (
    DLSM,
    Discriminator,
    RatioEstimator,
    class_denoiser,
    dlsm_regulariser,
    loss_weight,
    observed_denoiser,
)
from tiwbench.ratios.trunk_file import check_trunk_file, file_sha256, load_trunk


def _vector_only(cls, dataset) -> None:
    if dataset.kind != "vector":
        raise DataError(f"ratio estimator {cls.name!r} works on vector data only (its trunk is the observed-data "
                        f"MLP denoiser); for {dataset.name!r} use 'discriminator' or 'denoiser_diff'")


def _with_selection(cfg):
    """A train config that always scores a held-out split (at least once, at the last step): the choices below
    need one even where the budget does not select the step count."""
    return cfg if cfg.select_every else dataclasses.replace(cfg, select_every=cfg.steps)


# -- the paper's recipe: a frozen trunk and a trained head ------------------------------------------------------


class TrunkNet(nn.Module):
    """net(x_in, c_noise) = head(trunk.features(x_in, c_noise), c_noise). The trunk is frozen: its parameters
    never require grad, so the ratio models' optimiser leaves them out, and ∇ₓ still flows through it."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk.requires_grad_(False), head

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: its norm/dropout layers stay in inference mode
        return self

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.features(x_in, c_noise), c_noise)


class Trunk(RatioEstimator):
    """A time-conditioned head (an MLP of the ratio models' width, depth 2) on the frozen hidden features of the
    observed-data denoiser at (x_σ, σ), the denoiser's own input scaling, by class-balanced BCE. Step count and
    L2 strength (Adam's weight decay, over ``L2_FACTORS`` × ratio.weight_decay, fixed a priori) are chosen on the
    held-out BCE; the head is then refitted on all the data with both."""

    name = "trunk"
    description = "frozen observed-data denoiser trunk + time-conditioned head by balanced BCE (the paper's recipe)"
    L2_FACTORS: ClassVar[tuple[float, ...]] = (1.0, 10.0, 100.0)
    dlsm: ClassVar[bool] = False

    @classmethod
    def check(cls, dataset) -> None:
        if cls.dlsm:  # the DLSM term's double backward through a U-Net is out of budget
            _vector_only(cls, dataset)

    @classmethod
    def check_config(cls, dataset, cfg) -> None:
        check_trunk_file(cfg, dataset)

    def build_head(self, d_obs: EDMPrecond | None, trunk: nn.Module | None = None) -> LearnedRatio:
        trunk = d_obs.model if trunk is None else trunk
        head = MLP(trunk.feature_dim, out_dim=1, hidden=self.cfg.hidden, depth=2, time=True)
        model = LearnedRatio(TrunkNet(trunk, head), self.dataset.sigma_data, self.time_dependent,
                             self.cfg.logit_max, precond=False, kernel=self.kernel)
        model.clean_sigma = self.cfg.sigma_min  # a clean classifier: the trunk at the least noise it has seen
        return model

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        if self.cfg.trunk:  # a pretrained trunk file (images)
            trunk, knows = load_trunk(self.cfg, self.dataset)
            d_obs, obs_info = None, {}
            source = {"features": "trunk file (frozen)", "file": self.cfg.trunk, "knows_labels": knows,
                      "sha256": file_sha256(self.cfg.trunk)}  # the config names a path; this, its contents
            model = self.build_head(None, trunk).to(device)
        else:
            d_obs, obs_info = observed_denoiser(self, bias, ref, generator, device, progress)
            source = {"features": "observed-data denoiser (DSM on D_bias ∪ D_ref), frozen"}
            model = self.build_head(d_obs).to(device)
        cfg = _with_selection(self.train_config())
        term, odds = None, None
        if self.dlsm and self.time_dependent:
            term, odds = dlsm_regulariser(d_obs, len(ref), len(bias), cfg.batch_size, device)
        init = copy.deepcopy(model.state_dict())
        tried = {}
        for factor in self.L2_FACTORS:
            model.load_state_dict(init)
            l2 = cfg.weight_decay * factor
            tried[l2] = choose_ratio_steps(model, bias, ref, dataclasses.replace(cfg, weight_decay=l2), generator,
                                           device, progress, term)
        l2 = min(tried, key=lambda k: (tried[k].best_value, k))  # ties: the weaker penalty
        sel = tried[l2]
        if self.keep is not None:
            self.keep["selection"] = sel
        model.load_state_dict(init)
        plain = dataclasses.replace(cfg, weight_decay=l2, steps=sel.best, select_every=0, select_patience=0)
        info = train_ratio(model, bias, ref, plain, generator, device, progress, term)
        info.update(obs_info)
        info["trunk"] = {**source, "l2": l2, "steps": sel.best,
                         "held_out_bce": {f"{k:g}": v.best_value for k, v in tried.items()},
                         "steps_by_l2": {f"{k:g}": v.best for k, v in tried.items()}}
        if odds is not None:
            info["log_prior_odds"] = odds
        return model, info


class TrunkDLSM(Trunk):
    name = "dlsm_trunk"
    description = "the trunk's head trained by balanced BCE + denoising likelihood score matching (as dlsm)"
    dlsm = True


# -- an ensemble with a calibrated temperature ------------------------------------------------------------------


class EnsembleRatio(LearnedRatio):
    """ℓ(x, σ) = mean_k ℓ_k(x, σ) / T: K ratio models' logits averaged, divided by a temperature T fitted on
    held-out data. T scales the correction too (∇ₓℓ = mean ∇ₓℓ_k / T)."""

    kind = "ensemble"

    def __init__(self, members: list[LearnedRatio], temperature: float):
        first = members[0]
        super().__init__(nn.ModuleList(members), first.sigma_data, first.time_dependent, first.logit_max,
                         False, first.kernel)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    @property
    def members(self) -> nn.ModuleList:
        return self.net

    def _logit(self, x: torch.Tensor, sigma) -> torch.Tensor:
        mean = torch.stack([m._logit(x, sigma) for m in self.members]).mean(0)
        return mean / self.temperature.to(mean.dtype)


def fit_temperature(logit: torch.Tensor, held: HeldOut) -> float:
    """The T > 0 that minimises the held-out class-balanced BCE of logit / T: a log-spaced grid over [1/20, 20]
    (801 points, ≈ 0.75 % apart), then the best of a finer grid around it. One parameter, so a grid is exact
    enough and cannot fail to converge."""
    logit = logit.double()

    def best_of(grid: torch.Tensor) -> float:
        values = [held_out_bce((logit / t).float(), held) for t in grid.tolist()]
        return float(grid[min(range(len(values)), key=values.__getitem__)])

    t = best_of(torch.logspace(math.log10(0.05), math.log10(20.0), 801, dtype=torch.float64))
    return best_of(torch.linspace(t * 0.99, t * 1.01, 41, dtype=torch.float64))


class DiscriminatorEnsemble(Discriminator):
    """K discriminators of their own seeds on the same held-out split, each with its own step count chosen on it;
    the temperature is fitted on the held-out logits of the members as they stood at their chosen steps (trained
    without the held-out points), then each member is refitted on all the data for its step count."""

    name = "discriminator_ensemble"
    description = "K = 4 discriminators, logits averaged, divided by a temperature fitted on the held-out split"
    K: ClassVar[int] = 4

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        cfg = _with_selection(self.train_config())
        seed = generator.initial_seed()
        members, selections = [], []
        for k in range(self.K):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 7919 * (k + 1))
                member = self.build().to(device)
            g = torch.Generator().manual_seed(seed + 104729 * (k + 1))
            init = copy.deepcopy(member.state_dict())
            sel = choose_ratio_steps(member, bias, ref, cfg, g, device, progress, split_seed=seed)
            member.load_state_dict(init)
            plain = dataclasses.replace(cfg, steps=sel.best, select_every=0, select_patience=0)
            train_ratio(member, bias, ref, plain, g, device, progress)
            members.append(member)
            selections.append(sel)
        held = selections[0].held
        with torch.no_grad():
            out_logit = torch.stack([s.trial.logit(held.x, held.sigma) for s in selections]).mean(0)
        t = fit_temperature(out_logit, held)
        model = EnsembleRatio(members, t).eval()
        if self.keep is not None:  # the held-out ensemble as it stood, with its temperature
            trial = EnsembleRatio([s.trial for s in selections], t).eval()
            self.keep["selection"] = dataclasses.replace(selections[0], trial=trial)
        return model, {"ensemble": {"k": self.K, "steps": [s.best for s in selections], "temperature": t,
                                    "held_out_bce": held_out_bce(out_logit, held),
                                    "held_out_bce_calibrated": held_out_bce(out_logit / t, held)}}


# -- the correction gated at σ* ---------------------------------------------------------------------------------


class GatedRatio(ClipCountsOf, nn.Module):
    """A ratio model whose weight is the base model's everywhere and whose correction ∇ₓ log w_σ is the base
    model's below σ* and 0 from σ* up (TIW-DSM then regresses on y there, weighted: tiw_dsm_nocorr's target)."""

    kind = "gated"
    counts_from = "base"

    def __init__(self, base, sigma_star: float):
        super().__init__()
        self.base, self.sigma_star = base, float(sigma_star)
        self.time_dependent, self.logit_max = base.time_dependent, base.logit_max

    def logit(self, x, sigma):
        return self.base.logit(x, sigma)

    def log_ratio(self, x, sigma, count=None):
        return self.base.log_ratio(x, sigma, count=count)

    def log_ratio_and_grad(self, x, sigma, count=None):
        log_w, grad = self.base.log_ratio_and_grad(x, sigma, count=count)
        sigma = torch.as_tensor(sigma, device=x.device).expand(len(x))
        return log_w, grad * expand_like((sigma < self.sigma_star).to(grad.dtype), grad)


def correction_gain(model, d_obs, held: HeldOut, log_prior_odds: float, edges: list[float],
                    repeats: int = 4) -> list[float]:
    """Per σ band, how much the model's class correction lowers the held-out denoising error: the class-balanced
    mean of λ‖D_obs(x) − y‖² − λ‖D_obs(x) + σ²∇ₓ log P(c|x) − y‖² over held-out points y of class c, σ
    log-uniform in the band. With D_obs = E_obs[y|x] this is E‖c*‖² − E‖ĉ − c*‖² (the cross term vanishes by
    Tweedie): positive exactly where the estimated correction's error is smaller than its signal."""
    g = torch.Generator().manual_seed(held.seed ^ 0x6A7E)
    y0 = torch.cat([held.ref_out, held.bias_out])
    is_ref0 = torch.cat([torch.ones(len(held.ref_out), dtype=torch.bool), torch.zeros(len(held.bias_out),
                                                                                        dtype=torch.bool)])
    weight0 = torch.where(is_ref0, 0.5 / len(held.ref_out), 0.5 / len(held.bias_out)) / repeats
    device = held.x.device
    y = y0.repeat(repeats, *[1] * (y0.dim() - 1)).to(device)
    is_ref, weight = is_ref0.repeat(repeats).to(device), weight0.repeat(repeats).double().to(device)
    gains = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sigma = (torch.rand(len(y), generator=g, dtype=torch.float64) * math.log(hi / lo) + math.log(lo)).exp()
        sigma = sigma.float().to(device)
        x = (y + expand_like(sigma, y) * torch.randn(y.shape, generator=g).to(device)).requires_grad_(True)
        with torch.no_grad():
            d = d_obs(x.detach(), sigma)
        d_c = class_denoiser(model.logit(x, sigma), x, sigma, d, is_ref, log_prior_odds, create_graph=False)
        lam = expand_like(loss_weight(d_obs, sigma), y)
        without = (lam * (d - y) ** 2).flatten(1).sum(1).double()
        with_c = (lam * (d_c.detach() - y) ** 2).flatten(1).sum(1).double()
        gains.append(float(((without - with_c) * weight).sum()))
    return gains


def choose_sigma_star(gains: list[float], edges: list[float]) -> float:
    """σ* = the band edge below which the summed held-out gain is largest (inf: every band, the last edge
    included; the first edge: none)."""
    cumulative = [0.0]
    for v in gains:
        cumulative.append(cumulative[-1] + v)
    j = max(range(len(cumulative)), key=lambda i: (cumulative[i], -i))  # ties: the lower gate
    return math.inf if j == len(gains) else edges[j]


class Gated(RatioEstimator):
    """``base``'s model with its correction used only below σ*, chosen on held-out data: the base model as it
    stood at its chosen step count (trained without the held-out points) is scored per σ band by
    :func:`correction_gain`; σ* keeps the bands below it whose summed gain is largest. The gate is then applied to
    the base model refitted on all the data (as the step count is)."""

    base: ClassVar[type[RatioEstimator]] = Discriminator
    BANDS: ClassVar[int] = 12  # log-spaced over the ratio models' σ range

    @classmethod
    def check(cls, dataset) -> None:
        _vector_only(cls, dataset)  # the gate's class denoisers use the observed-data MLP denoiser
        cls.base.check(dataset)

    def fit_base(self, bias, ref, generator, device="cpu", progress=None):
        """The base model, its info and its held-out selection: the group's own fit of ``base`` where it has one
        with a selection (so that ``tiw_dsm@X_gated`` differs from ``tiw_dsm@X`` by the gate alone), else a fit
        here that scores a held-out split."""
        if self.base_fit is not None:
            model, info, sel = self.base_fit(self.base.name)
            if sel is not None or not self.time_dependent:
                drop = ("per_sigma", "checkpoint_hash", "seconds", "provider", "kind")
                return model, {"base": self.base.name, **{k: v for k, v in info.items() if k not in drop}}, sel
        cfg = dataclasses.replace(self.cfg, select_every=self.cfg.select_every or self.cfg.steps)
        est = self.base(self.dataset, cfg, self.time_dependent, self.kernel)
        est.split, est.shared, est.shared_seed, est.keep = self.split, self.shared, self.shared_seed, {}
        model, info = est.fit(bias, ref, generator, device, progress)
        return model, info, est.keep.get("selection")

    def fit(self, bias, ref, generator, device="cpu", progress=None):
        model, info, sel = self.fit_base(bias, ref, generator, device, progress)
        if not self.time_dependent:  # a clean classifier has no correction to gate
            return model, info
        trial = sel.trial if sel.trial is not None else model
        d_obs, _ = observed_denoiser(self, bias, ref, generator, device, progress)
        lo, hi = math.log(self.cfg.sigma_min), math.log(self.cfg.sigma_max)
        edges = [math.exp(lo + (hi - lo) * i / self.BANDS) for i in range(self.BANDS + 1)]
        gains = correction_gain(trial, d_obs, sel.held, math.log(len(ref) / len(bias)), edges)
        sigma_star = choose_sigma_star(gains, edges)
        info["gate"] = {"sigma_star": sigma_star if math.isfinite(sigma_star) else None,
                        "edges": edges, "held_out_gain": gains}
        return GatedRatio(model, sigma_star), info


def gated(base: type[RatioEstimator]) -> type[Gated]:
    return type(f"Gated{base.__name__}", (Gated,), {
        "name": f"{base.name}_gated", "base": base,
        "description": f"{base.name} with its correction used only below a σ* chosen on held-out denoising error",
        "__module__": __name__})


GatedDiscriminator = gated(Discriminator)
GatedTrunk = gated(Trunk)
GatedDLSM = gated(DLSM)
GatedDLSMTrunk = gated(TrunkDLSM)
