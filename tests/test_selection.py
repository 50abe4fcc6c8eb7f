"""Checkpoint selection (train.select_every): the best EMA snapshot on validation samples is the one reported;
a longer run holds the shorter run's snapshots bit for bit, so doubling the budget can only add candidates."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tiwbench.config import ConfigError, TrainConfig, load_suite
from tiwbench.registry import METHODS
from tiwbench.sweep.runner import expand, run_cells, scale_budget
from tiwbench.training.denoiser import make_denoiser
from tiwbench.training.loop import train_score
from tiwbench.training.selection import select_checkpoint


def _snapshots(values):
    return {step: {"weight": torch.full((1, 1), float(v)), "bias": torch.zeros(1)} for step, v in values.items()}


@pytest.mark.parametrize("higher, expected", [(False, 20), (True, 40)])
def test_the_best_snapshot_is_chosen_and_left_loaded(higher, expected):
    net = torch.nn.Linear(1, 1)
    snaps = _snapshots({10: 3.0, 20: 1.0, 30: 1.0, 40: 5.0, 50: math.nan})  # 20 and 30 tie: the earlier wins

    def score():
        return float(net.weight.detach())

    out = select_checkpoint(net, snaps, score, higher_is_better=higher)
    assert out["step"] == expected and float(net.weight.detach()) == out["values"][str(expected)]
    assert list(out["values"]) == ["10", "20", "30", "40", "50"]


def test_all_non_finite_keeps_the_last_snapshot():
    net = torch.nn.Linear(1, 1)
    out = select_checkpoint(net, _snapshots({5: 1.0, 10: 2.0}), lambda: math.nan)
    assert out["step"] == 10 and float(net.weight.detach()) == 2.0


def _train(toy, steps):
    split = toy.split(0.1, 0)
    x, is_ref = split.observed()
    cfg = TrainConfig(steps=steps, hidden=16, select_every=20)
    torch.manual_seed(0)
    net = make_denoiser(toy, cfg)
    snaps: dict = {}
    ema, _ = train_score(METHODS.get("dsm_obs")(), net, x, is_ref, None, cfg, torch.Generator().manual_seed(1),
                         snapshots=snaps)
    return ema, snaps


def test_a_run_of_twice_the_steps_holds_the_shorter_runs_snapshots(toy):
    short_ema, short = _train(toy, 60)
    _, long = _train(toy, 120)
    assert sorted(short) == [20, 40, 60] and sorted(long) == [20, 40, 60, 80, 100, 120]
    for step, state in short.items():
        for k, v in state.items():
            assert torch.equal(v, long[step][k]), (step, k)
    for k, v in short_ema.state_dict().items():  # the last snapshot is the returned EMA network
        assert torch.equal(v.cpu(), short[60][k])


def test_snapshots_survive_a_resume(tmp_path, toy):
    split = toy.split(0.1, 0)
    x, is_ref = split.observed()
    cfg = TrainConfig(steps=60, hidden=16, select_every=10, checkpoint_every=25)
    method = METHODS.get("dsm_obs")()

    def run(**kw):
        torch.manual_seed(0)
        snaps: dict = {}
        train_score(method, make_denoiser(toy, cfg), x, is_ref, None, cfg, torch.Generator().manual_seed(1),
                    snapshots=snaps, **kw)
        return snaps

    full = run()

    class Stop(Exception):
        pass

    def stop_at_33(done, total):
        if done == 33:
            raise Stop

    ck = tmp_path / "ck.pt"
    with pytest.raises(Stop):
        run(checkpoint=ck, progress=stop_at_33)
    resumed = run(checkpoint=ck)  # resumes at step 25: snapshots 10 and 20 come from the checkpoint
    assert sorted(resumed) == sorted(full)
    for step in full:
        for k in full[step]:
            assert torch.equal(full[step][k], resumed[step][k]), (step, k)


SUITE = """name: sel
datasets: [gmm]
dataset_params: {gmm: {dim: 4, n_bias: 2000}}
methods: [dsm_ref, dsm_obs, dg_obs]
ref_fracs: [0.05]
seeds: [0]
metrics: [fd, bias]
profiles:
  default:
    gmm:
      train: {steps: %(steps)d, batch_size: 128, hidden: 32%(select)s}
      ratio: {steps: 40, hidden: 32}
      sample: {n: 300, steps: 6}
"""


def _records(tmp_path, name, steps, select="", scale=1.0):
    p = tmp_path / f"{name}.yaml"
    p.write_text(SUITE % {"steps": steps, "select": select})
    cells = scale_budget(expand(load_suite(str(p))), scale)
    out = tmp_path / name
    summary = run_cells(cells, out)
    assert not summary["failed"], summary
    return {json.loads(r.read_text())["method"]: json.loads(r.read_text()) for r in out.rglob("record.json")}


def _values(rec):
    return {m["name"]: m["value"] for m in rec["metrics"]}


def test_selection_in_a_sweep(tmp_path):
    plain = _records(tmp_path, "plain", 120)
    # the truth's rule on all of D_ref: one snapshot, the last, gives the same samples as no selection
    last = _records(tmp_path, "last", 120, ", select_every: 120, select_source: truth")
    for method in plain:
        assert _values(last[method]) == _values(plain[method])
        assert last[method]["train"]["selection"]["step"] == 120
        assert "select_every" not in plain[method]["config"]["train"]  # configs as before when selection is off
        assert plain[method]["train"]["selection"] == {"source": "none", "step": 120}  # the last step, named
    picked = _records(tmp_path, "picked", 120, ", select_every: 30, select_source: truth")
    for rec in picked.values():
        sel = rec["train"]["selection"]
        assert sel["source"] == "truth" and sel["by"] == "fd" and sorted(map(int, sel["values"])) == [30, 60, 90, 120]
        assert sel["step"] == int(min(sel["values"], key=lambda k: (sel["values"][k], int(k))))
    # dg_obs reuses dsm_obs's snapshots but chooses with its own (guided) sampler
    assert picked["dg_obs"]["train"]["shared_with"] == "dsm_obs"
    assert picked["dg_obs"]["train"]["selection"]["values"] != picked["dsm_obs"]["train"]["selection"]["values"]
    # twice the budget: the first four snapshots score exactly as before (dsm_ref uses no ratio model)
    doubled = _records(tmp_path, "doubled", 120, ", select_every: 30, select_source: truth", scale=2.0)
    sel1, sel2 = picked["dsm_ref"]["train"]["selection"], doubled["dsm_ref"]["train"]["selection"]
    assert sorted(map(int, sel2["values"])) == [30, 60, 90, 120, 150, 180, 210, 240]
    assert {k: sel2["values"][k] for k in sel1["values"]} == sel1["values"]
    if sel2["step"] == sel1["step"]:
        assert _values(doubled["dsm_ref"]) == _values(picked["dsm_ref"])


def test_select_by_must_be_a_ranked_metric(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(SUITE % {"steps": 10, "select": ", select_every: 5, select_source: truth, select_by: fid_typo"})
    with pytest.raises(ConfigError, match="select_by"):
        expand(load_suite(str(p)))
    p.write_text(SUITE % {"steps": 10, "select": ", select_every: 5, select_source: truth, select_by: bias_ref"})
    with pytest.raises(ConfigError, match="diagnostic"):
        expand(load_suite(str(p)))


def _sel_record(method, seed, values, step):
    return {"suite": "s", "dataset": "gmm", "method": method, "ref_frac": 0.05, "seed": seed, "status": "ok",
            "train": {"selection": {"by": "fd", "step": step, "values": {str(k): v for k, v in values.items()}}}}


def test_validation_curves_summary_and_figure(tmp_path):
    from tiwbench.report.curves import curves_frame, peak_summary, save_curves, to_markdown

    recs = [_sel_record("a", 0, {10: 2.0, 20: 1.0, 30: 1.5}, 20), _sel_record("a", 1, {10: 2.0, 20: 1.2, 30: 1.1}, 30),
            _sel_record("b", 0, {10: 3.0, 20: 2.0, 30: 1.0}, 30), {"status": "ok", "train": {}}]
    frame = curves_frame(recs)
    assert len(frame) == 9 and frame.chosen.sum() == 3
    summary = peak_summary(frame).set_index("method")
    assert summary.loc["a", "mean_step"] == 25 and summary.loc["a", "at_end"] == 1  # seed 1 peaked at the end
    assert summary.loc["b", "at_end"] == 1 and summary.loc["b", "seeds"] == 1
    assert "| s | gmm | – | 0.05 | a | truth: fd | 2 | 25 | 1 |" in to_markdown(recs)  # no source: the truth's
    path = save_curves(recs, tmp_path / "plot.png")
    assert path == tmp_path / "plot_curves.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert to_markdown([{"status": "ok"}]) == "" and save_curves([], tmp_path / "x.png") is None


def test_html_report_embeds_the_curves(tmp_path):
    from tiwbench.report.render import render

    recs = [_sel_record("a", 0, {10: 2.0, 20: 1.0}, 20) | {"metrics": [{"name": "fd", "value": 1.0,
                                                                          "higher_is_better": False}],
                                                            "config": {}, "config_hash": "h", "profile": "default"}]
    from tiwbench.report.leaderboard import aggregate, records_frame

    page = render(aggregate(records_frame(recs)), "html", recs)
    assert "validation curves" in page and page.count("data:image/png;base64") >= 2


def _ratio_fit(toy, steps, select_every=0, time_dependent=True, patience=0):
    from tiwbench.config import RatioConfig
    from tiwbench.ratios.discriminator import RatioTrainConfig, make_ratio, train_ratio

    split = toy.split(0.05, 0)
    torch.manual_seed(3)
    model = make_ratio(toy, RatioConfig(hidden=16), time_dependent)
    cfg = RatioTrainConfig(steps=steps, batch_size=64, select_every=select_every, select_patience=patience)
    info = train_ratio(model, split.bias, split.ref, cfg, torch.Generator().manual_seed(5))
    return model, info


@pytest.mark.parametrize("time_dependent", [True, False])
def test_ratio_selection_refits_for_the_best_held_out_step_count(toy, time_dependent):
    model, info = _ratio_fit(toy, 120, select_every=20, time_dependent=time_dependent)
    sel = info["selection"]
    assert sorted(map(int, sel["values"])) == [20, 40, 60, 80, 100, 120]
    assert sel["steps"] == int(min(sel["values"], key=lambda k: (sel["values"][k], int(k))))
    plain, _ = _ratio_fit(toy, sel["steps"], time_dependent=time_dependent)  # a plain run of that many steps
    for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # twice the budget: the same held-out curve on the first six checks
    _, info2 = _ratio_fit(toy, 240, select_every=20, time_dependent=time_dependent)
    assert {k: info2["selection"]["values"][k] for k in sel["values"]} == sel["values"]


def test_held_out_bce_finds_an_overfitted_classifier(toy):
    """A clean classifier on 5 % references, trained far past its best: the held-out BCE rises again, and
    the chosen step count is well short of the budget."""
    model, info = _ratio_fit(toy, 1500, select_every=100, time_dependent=False)
    values = {int(k): v for k, v in info["selection"]["values"].items()}
    assert info["selection"]["steps"] < 1500 and values[1500] > min(values.values())
    # patience: the same checks up to where it stops, then none; here the same choice and the same model
    patient, pinfo = _ratio_fit(toy, 1500, select_every=100, time_dependent=False, patience=3)
    pvalues = {int(k): v for k, v in pinfo["selection"]["values"].items()}
    best = pinfo["selection"]["steps"]
    assert max(pvalues) == best + 300 and all(values[k] == v for k, v in pvalues.items())
    assert min(pvalues.values()) == pvalues[best]
    if best == info["selection"]["steps"]:
        for a, b in zip(model.state_dict().values(), patient.state_dict().values(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("higher", [False, True])
def test_best_step_is_the_one_rule_of_both_selections(higher):
    from tiwbench.best_step import best_step

    nan = float("nan")
    scores = {10: 3.0, 20: 1.0, 30: 1.0, 40: nan, 50: 2.0}
    # brute force: the finite step whose signed score is least, the earliest among equals
    sign = -1 if higher else 1
    expected = sorted((sign * v, k) for k, v in scores.items() if v == v)[0][1]
    assert best_step(scores, higher) == expected == (10 if higher else 20)
    assert best_step({10: nan, 20: float("inf")}) == 20 and best_step({10: nan}, default=99) == 99
    # both selections call it: a change of the rule cannot reach one and not the other
    import inspect

    from tiwbench.ratios import discriminator
    from tiwbench.training import selection

    assert "best_step(" in inspect.getsource(selection.select_checkpoint)
    assert "best_step(" in inspect.getsource(discriminator.choose_ratio_steps)  # select_ratio_steps' choice
