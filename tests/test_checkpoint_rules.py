"""The rules that choose a cell's checkpoint (train.select_source): what each may look at, and the score a
practitioner can compute. ``d_ref_holdout`` holds a share of D_ref out of every fit and scores snapshots on it;
``none`` reports the last step; ``truth`` scores against the unbiased target (a reference)."""

from __future__ import annotations

import json

import pytest
import torch

from tiwbench.config import ConfigError, TrainConfig, load_suite, selection_rule
from tiwbench.data.gmm import GMM
from tiwbench.registry import RATIOS
from tiwbench.sweep import runner
from tiwbench.sweep.runner import expand, override_selection, run_cells
from tiwbench.training import families
from tiwbench.training.selection import held_out_loss, selection_sigmas

SUITE = """name: rules
datasets: [gmm]
dataset_params: {gmm: {dim: 4, n_bias: 1000, n_oracle: 500}}
methods: [dsm_ref, tiw_dsm, iw_dsm, tiw_dsm@exact_empirical, oracle]
ref_fracs: [0.1]
seeds: [0]
metrics: [fd, bias]
profiles:
  default:
    gmm:
      train: {steps: 40, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 5, ema_halflife: 5%(select)s}
      ratio: {steps: 20, batch_size: 32, hidden: 32, depth: 2, select_every: 10}
      sample: {n: 120, steps: 6, batch_size: 120}
"""


def _cells(tmp_path, select=", select_every: 20"):
    p = tmp_path / "rules.yaml"
    p.write_text(SUITE % {"select": select})
    return expand(load_suite(str(p)))


def _records(out):
    return {json.loads(r.read_text())["method"]: json.loads(r.read_text()) for r in out.rglob("record.json")}


# -- the split -------------------------------------------------------------------------------------------
def test_hold_out_moves_a_share_of_d_ref_and_of_the_oracle_set_out_of_training():
    split = GMM(dim=4, n_bias=1000, n_oracle=500).split(0.1, seed=3)
    held = split.hold_out(0.2, seed=3)
    assert (len(held.ref), len(held.held_ref)) == (80, 20) and (len(held.oracle), len(held.held_oracle)) == (400, 100)
    assert torch.equal(held.bias, split.bias)  # D_bias untouched
    rows = {tuple(r.tolist()) for r in split.ref}
    kept, out = {tuple(r.tolist()) for r in held.ref}, {tuple(r.tolist()) for r in held.held_ref}
    assert kept | out == rows and not kept & out  # a partition of D_ref
    assert held.hashes["ref"] != split.hashes["ref"] and "held_ref" in held.hashes  # records say what trained
    again = split.hold_out(0.2, seed=3)
    assert torch.equal(again.held_ref, held.held_ref)  # deterministic from the seed
    assert not torch.equal(split.hold_out(0.2, seed=4).held_ref, held.held_ref)
    assert len(GMM(dim=4, n_bias=1000).split(0.002, 0).hold_out(0.2, 0).held_ref) == 1  # at least one out, one in


# -- the rules' config -----------------------------------------------------------------------------------
def test_defaults_name_a_practitioners_rule_and_bad_combinations_name_the_fix():
    assert selection_rule(TrainConfig()).select_source == "none"
    rule = selection_rule(TrainConfig(select_every=10))
    assert (rule.select_source, rule.select_by, rule.ref_holdout) == ("d_ref_holdout", "loss", 0.2)
    truth = selection_rule(TrainConfig(select_every=10, select_source="truth"))
    assert (truth.select_by, truth.ref_holdout) == ("fd", 0.0)
    bad = [({"select_every": 10, "select_source": "none"}, "drop train.select_every"),
           ({"select_source": "truth"}, "set train.select_every"),
           ({"select_every": 10, "select_by": "bias"}, "loss, fd"),
           ({"select_every": 10, "ref_holdout": 0.0}, "train.ref_holdout in"),
           ({"select_every": 10, "ref_holdout": 1.0}, "must be in"),
           ({"select_every": 10, "select_source": "test_set"}, "d_ref_holdout"),
           ({"select_by": "fd"}, "source is 'none'")]
    for kw, fix in bad:
        with pytest.raises(ConfigError, match=fix):
            selection_rule(TrainConfig(**kw))


# -- d_ref_holdout: no fit sees the held-out points ------------------------------------------------------
def test_held_out_references_reach_no_network_no_ratio_model_and_no_ceiling(tmp_path, monkeypatch, one_thread):
    seen = {"train": [], "ratio": []}
    train = families.ScoreNetwork.train

    def spy_train(self, method, model, x, is_ref, *a, **kw):
        seen["train"].append((type(method).__name__, x.clone()))
        return train(self, method, model, x, is_ref, *a, **kw)

    monkeypatch.setattr(families.ScoreNetwork, "train", spy_train)
    for name in ("discriminator", "exact_empirical"):
        cls = RATIOS.get(name)
        fit = cls.fit

        def spy_fit(self, bias, ref, *a, _fit=fit, **kw):
            seen["ratio"].append(ref.clone())
            return _fit(self, bias, ref, *a, **kw)

        monkeypatch.setattr(cls, "fit", spy_fit)
    groups = []
    init = runner.Group.__init__

    def keep_group(self, *a, **kw):
        init(self, *a, **kw)
        groups.append(self)

    monkeypatch.setattr(runner.Group, "__init__", keep_group)
    run_cells(_cells(tmp_path), tmp_path / "runs")
    (group,) = groups
    held_ref = {tuple(r.tolist()) for r in group.split.held_ref}
    held_oracle = {tuple(r.tolist()) for r in group.split.held_oracle}
    assert len(seen["train"]) == 5 and len(seen["ratio"]) == 3  # every network; time and clean ratios, the ceiling
    for name, x in seen["train"]:
        rows = {tuple(r.tolist()) for r in x}
        assert not rows & held_ref and not rows & held_oracle, name
    for ref in seen["ratio"]:
        assert len(ref) == len(group.split.ref) and not {tuple(r.tolist()) for r in ref} & held_ref
    recs = _records(tmp_path / "runs")
    # the ceiling's proportions and the reference levels count the training part of D_ref only
    kept = torch.bincount(group.split.ref_labels.long(), minlength=8).double() / len(group.split.ref)
    props = recs["tiw_dsm@exact_empirical"]["ratio"]["time@exact_empirical"]["ref_proportions"]
    assert torch.allclose(torch.tensor(props, dtype=torch.float64), kept)
    level = next(m for m in recs["dsm_ref"]["metrics"] if m["name"] == "bias_ref_level")
    assert level["ref_size"] == len(group.split.ref) == recs["dsm_ref"]["ref_size"] == 80
    for method, rec in recs.items():
        sel = rec["train"]["selection"]
        assert sel["source"] == "d_ref_holdout" and sel["by"] == "loss", method
        assert sel["holdout"] == ({"of": "oracle", "share": 0.2, "n": 100} if method == "oracle" else
                                  {"of": "d_ref", "share": 0.2, "n": 20})
        assert sel["step"] == int(min(sel["values"], key=lambda k: (sel["values"][k], int(k))))
        assert rec["ref_held_out"] == 20 and rec["config"]["train"]["ref_holdout"] == 0.2


def test_the_holdout_rule_scores_every_method_on_the_same_noise_and_the_chosen_snapshot_is_sampled(tmp_path,
                                                                                                 one_thread):
    """Two rules that differ in their score alone train the same networks; the truth's rule on the same
    reduced D_ref differs from them only in the step it chooses (and then in every metric if that differs)."""
    cells = _cells(tmp_path)
    run_cells(cells, tmp_path / "loss")
    run_cells(override_selection(_cells(tmp_path), source="truth", holdout=0.2), tmp_path / "truth")
    loss, truth = _records(tmp_path / "loss"), _records(tmp_path / "truth")
    for method in loss:
        a, b = loss[method]["train"]["selection"], truth[method]["train"]["selection"]
        assert b["source"] == "truth" and b["by"] == "fd" and "holdout" not in b
        assert loss[method]["data_hashes"] == truth[method]["data_hashes"]  # the same reduced D_ref
        if a["step"] == b["step"]:  # the same snapshot: the same samples, so the same numbers
            assert loss[method]["metrics"] == truth[method]["metrics"], method
    assert truth["dsm_ref"]["suite"] == "rules_sel-truth-h0.2"


# -- none: the last step --------------------------------------------------------------------------------
def test_none_reports_the_last_step_even_with_a_holdout(tmp_path, one_thread):
    """Without snapshots the last EMA is sampled; with ref_holdout the networks still train on the reduced
    D_ref (so the holdout's cost can be measured apart from any rule)."""
    run_cells(_cells(tmp_path, select=""), tmp_path / "last")
    run_cells(_cells(tmp_path, select=", ref_holdout: 0.2"), tmp_path / "last_held")
    # the truth's rule with the last step its only candidate samples the same network as `none`
    run_cells(_cells(tmp_path, select=", select_every: 40, select_source: truth"), tmp_path / "one_snapshot")
    last, held, one = (_records(tmp_path / d) for d in ("last", "last_held", "one_snapshot"))
    for method in last:
        assert last[method]["train"]["selection"] == {"source": "none", "step": 40}
        assert held[method]["train"]["selection"]["source"] == "none"
        assert held[method]["train"]["selection"]["holdout"]["n"] == (100 if method == "oracle" else 20)
        assert one[method]["train"]["selection"]["step"] == 40
        assert last[method]["metrics"] == one[method]["metrics"], method
        assert "ref_holdout" not in last[method]["config"]["train"]  # configs (and hashes) as before
        assert held[method]["ref_size"] == 80 and last[method]["ref_size"] == 100


# -- the score ------------------------------------------------------------------------------------------
class _Gaussian(torch.nn.Module):
    """The exact denoiser of N(0, s²I): D(x; σ) = s²/(s² + σ²) x."""

    def __init__(self, s: float, sigma_data: float):
        super().__init__()
        self.s, self.sigma_data = s, sigma_data

    def forward(self, x, sigma):
        return x * (self.s**2 / (self.s**2 + sigma**2)).reshape(-1, *([1] * (x.ndim - 1)))


def test_held_out_loss_of_the_exact_denoiser_is_one_at_every_noise_level():
    """For y ~ N(0, s²I) and σ_data = s, EDM's λ(σ) times the posterior variance s²σ²/(s² + σ²) is exactly 1:
    the held-out loss of the exact denoiser is 1 in expectation, at every σ, and any other denoiser's is
    higher."""
    from tiwbench.config import SampleConfig

    g = torch.Generator().manual_seed(0)
    s, n, d = 0.7, 4000, 3
    held = torch.randn(n, d, generator=g) * s
    sigmas = selection_sigmas(SampleConfig(steps=12))
    noise = torch.randn(len(sigmas), n, d, generator=g)
    exact = held_out_loss(_Gaussian(s, s), held, sigmas, noise, batch_size=5000)
    assert abs(exact - 1) < 0.03  # MC error of 12 × 4000 × 3 draws of a unit-mean variable
    for sigma in sigmas[[0, 5, 11]]:  # each level alone
        one = held_out_loss(_Gaussian(s, s), held, sigma.reshape(1), noise[:1], batch_size=1000)
        assert abs(one - 1) < 0.08, float(sigma)
    # a wrong prior N(0, s'²I) loses by λ(σ)(a − a')²(s² + σ²) per element in expectation, a = s²/(s² + σ²)
    s2 = 1.3 * s
    a, a2 = s**2 / (s**2 + sigmas.double() ** 2), s2**2 / (s2**2 + sigmas.double() ** 2)
    lam = (sigmas.double() ** 2 + s**2) / (sigmas.double() * s) ** 2
    excess = float((lam * (a - a2) ** 2 * (s**2 + sigmas.double() ** 2)).mean())
    wrong = held_out_loss(_Gaussian(s2, s), held, sigmas, noise)
    assert excess > 0.005 and wrong - exact == pytest.approx(excess, rel=0.15)


def test_held_out_loss_equals_a_plain_loop_over_levels_and_points():
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    class Den(torch.nn.Module):
        sigma_data = 0.5

        def forward(self, x, sigma):
            return net(torch.cat([x, sigma.log().unsqueeze(1)], 1))

    held = torch.randn(7, 2, generator=g)
    sigmas = torch.tensor([0.01, 0.3, 2.0, 40.0])
    noise = torch.randn(4, 7, 2, generator=g)
    total = 0.0
    for i, sig in enumerate(sigmas.tolist()):
        lam = (sig**2 + 0.25) / (sig * 0.5) ** 2
        for j in range(7):
            x = (held[j] + sig * noise[i, j]).unsqueeze(0)
            out = Den()(x, torch.tensor([sig]))[0]
            total += lam * float(((out - held[j]) ** 2).sum().detach())
    expected = total / (4 * 7 * 2)
    assert held_out_loss(Den(), held, sigmas, noise, batch_size=5) == pytest.approx(expected, rel=1e-5)


# -- the comparison of two rules ------------------------------------------------------------------------
def test_compare_suites_pairs_the_same_cells_by_seed_and_names_changed_winners():
    from scipy import stats

    from tiwbench.report.leaderboard import aggregate, records_frame
    from tiwbench.report.suite_compare import suite_pairs, to_markdown

    def rec(suite, method, seed, fd):
        return {"suite": suite, "dataset": "gmm", "method": method, "ref_frac": 0.05, "seed": seed,
                "status": "ok", "config": {"method": method, "seed": seed},
                "metrics": [{"name": "fd", "value": fd, "higher_is_better": False}]}

    base = {"dsm_ref": [0.10, 0.12, 0.11, 0.13], "tiw_dsm": [0.20, 0.22, 0.21, 0.25]}
    other = {"dsm_ref": [0.30, 0.33, 0.29, 0.35], "tiw_dsm": [0.21, 0.22, 0.20, 0.24]}  # the winner flips
    recs = [rec("r", m, s, v) for m, vs in base.items() for s, v in enumerate(vs)]
    recs += [rec("r_sel-truth", m, s, v) for m, vs in other.items() for s, v in enumerate(vs)]
    recs.append(rec("r_sel-truth", "dsm_ref", 9, 0.5))  # a seed only one suite has is left out of the pairs
    df = records_frame(recs)
    table = suite_pairs(df, "r", "r_sel-truth").set_index("method")
    d = [b - a for a, b in zip(base["dsm_ref"], other["dsm_ref"], strict=True)]
    mean = sum(d) / 4
    half = stats.t.ppf(0.975, 3) * stats.tstd(d) / 2
    assert table.loc["dsm_ref", "n"] == 4 and table.loc["dsm_ref", "diff"] == pytest.approx(mean)
    assert table.loc["dsm_ref", "paired_half"] == pytest.approx(half)
    md = to_markdown(df, aggregate(df), "r", "r_sel-truth")
    assert "| gmm | fd | 0.05 | dsm_ref, tiw_dsm" not in md  # each side has a clear winner
    assert "| gmm | fd | 0.05 | dsm_ref | tiw_dsm | **yes** |" in md
    with pytest.raises(Exception, match="no finished records of suite 'r_sel-fd'"):
        suite_pairs(df, "r", "r_sel-fd")
