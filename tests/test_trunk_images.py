"""The `trunk` estimator on images: the observed-data U-Net's bottleneck features, frozen, under a trained head;
trunk files (a user's pretrained U-Net) refused before any training when missing, of another architecture or
resolution, or the evaluator's classifier without the opt-in; reports mark the cells whose trunk knows the labels."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_images_data import cifar  # noqa: F401  (fixture: the small real-format CIFAR-10 archive)

from tiwbench.config import ConfigError, RatioConfig
from tiwbench.diffusion.unet import UNet

CFG = RatioConfig(steps=4, batch_size=8, channels=8, select_every=2)


class TinyImages:
    """An image dataset's interface as the ratio estimators use it: 1×8×8, two classes."""

    kind, name, shape, sigma_data, num_classes = "image", "tiny_images", (1, 8, 8), 0.5, 2


def _data():
    g = torch.Generator().manual_seed(0)
    bias = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    ref = torch.rand(12, 1, 8, 8, generator=g) * 0.5
    return bias, ref


def _fit(cfg=CFG):
    from tiwbench.registry import RATIOS

    est = RATIOS.get("trunk")(TinyImages(), cfg, True)
    est.shared = {}
    bias, ref = _data()
    model, info = est.fit(bias, ref, torch.Generator().manual_seed(0))
    return est, model, info


def test_the_unet_features_are_the_pooled_bottleneck():
    net = UNet(in_channels=1, resolution=8, channels=8)
    x, c = torch.randn(3, 1, 8, 8), torch.zeros(3)
    h, _, _ = net._encode(x, c)
    assert net.features(x, c).shape == (3, net.feature_dim) == (3, h.shape[1])
    torch.testing.assert_close(net.features(x, c), torch.nn.functional.silu(h).mean(dim=(2, 3)))


def test_a_trunk_fit_on_images_leaves_the_trunk_unchanged():
    est, model, info = _fit()
    (d_obs, _), = est.shared.values()
    trunk = model.net.trunk
    assert trunk is d_obs.model  # the group's observed-data U-Net, shared
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    # fit again on the same shared trunk: a head trained against it must not move it
    from tiwbench.registry import RATIOS

    again = RATIOS.get("trunk")(TinyImages(), CFG, True)
    again.shared = est.shared
    bias, ref = _data()
    model2, _ = again.fit(bias, ref, torch.Generator().manual_seed(1))
    assert model2.net.trunk is trunk
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in trunk.parameters())
    assert info["trunk"]["features"].startswith("observed-data denoiser")
    # the head did train, and the correction flows through the frozen trunk
    x = torch.randn(4, 1, 8, 8)
    logw, grad = model.log_ratio_and_grad(x, torch.full((4,), 1.0))
    assert logw.shape == (4,) and grad.shape == x.shape and grad.abs().sum() > 0


@pytest.fixture
def unet_file(tmp_path):
    from tiwbench.ratios.trunk_file import save_trunk

    torch.manual_seed(0)
    net = UNet(in_channels=1, resolution=8, channels=8)
    path = tmp_path / "trunk.pt"
    save_trunk(path, net)
    return path, net


def test_a_trunk_file_is_the_trunk_and_stays_frozen(unet_file):
    path, net = unet_file
    _, model, info = _fit(dataclasses.replace(CFG, trunk=str(path)))
    trunk = model.net.trunk
    for k, v in net.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v), k  # the file's weights, unchanged by the head's training
    assert info["trunk"]["file"] == str(path) and info["trunk"]["knows_labels"] is False
    import hashlib

    assert info["trunk"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert "final_obs_dsm" not in info  # no observed-data denoiser trained


def _refused(cfg, match, dataset=None):
    from tiwbench.registry import RATIOS

    with pytest.raises(ConfigError, match=match) as e:
        RATIOS.get("trunk").check_config(dataset or TinyImages(), cfg)
    assert "\n" not in str(e.value)


def test_a_missing_trunk_file_is_refused(tmp_path, unet_file):
    _refused(dataclasses.replace(CFG, trunk=str(tmp_path / "nope.pt")), "no file at .*save_trunk")
    path, _ = unet_file
    (tmp_path / "trunk.pt.json").unlink()
    _refused(dataclasses.replace(CFG, trunk=str(path)), "no architecture sidecar")


def test_a_trunk_file_of_another_resolution_or_architecture_is_refused(tmp_path, unet_file):
    from tiwbench.ratios.trunk_file import save_trunk

    path16 = tmp_path / "t16.pt"
    save_trunk(path16, UNet(in_channels=1, resolution=16, channels=8))
    _refused(dataclasses.replace(CFG, trunk=str(path16)), "at 16×16.*has 1 at 8×8")
    path, _ = unet_file
    side = tmp_path / "trunk.pt.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "kwargs": {**meta["kwargs"], "channels": 16}}))
    _refused(dataclasses.replace(CFG, trunk=str(path)), "do not fit the U-Net")
    side.write_text(json.dumps({**meta, "architecture": "ResNet"}))
    _refused(dataclasses.replace(CFG, trunk=str(path)), "architecture 'ResNet', not 'UNet'")


def test_a_trunk_file_on_vector_data_is_refused(unet_file):
    from tiwbench.data.mixtures import Toy2D

    _refused(dataclasses.replace(CFG, trunk=str(unet_file[0])), "serves image datasets", Toy2D())


@pytest.fixture
def evaluator_file(tmp_path):
    from tiwbench.data.evaluator import EvalCNN, save_classifier

    path = tmp_path / "evaluator.pt"
    save_classifier(EvalCNN(in_channels=1, resolution=8, num_classes=2, width=8), path, {})
    return path


def test_the_evaluator_classifier_needs_the_opt_in(evaluator_file):
    cfg = dataclasses.replace(CFG, trunk=str(evaluator_file))
    _refused(cfg, "evaluator's classifier.*trunk_knows_labels: true")
    _refused(dataclasses.replace(CFG, trunk_knows_labels=True), "without ratio.trunk")
    from tiwbench.registry import RATIOS

    opted = dataclasses.replace(cfg, trunk_knows_labels=True)
    RATIOS.get("trunk").check_config(TinyImages(), opted)  # accepted with the opt-in
    _, model, info = _fit(opted)
    assert info["trunk"]["knows_labels"] is True


def test_preflight_refuses_a_bad_trunk_file_before_training(tmp_path, evaluator_file, monkeypatch):
    from tiwbench.config import load_suite
    from tiwbench.sweep import runner
    from tiwbench.sweep.runner import expand, preflight

    cell = [c for c in expand(load_suite("smoke"), "smoke", ["digits_lt"]) if c.method == "tiw_dsm"][0]
    budget = dataclasses.replace(cell.budget, ratio=dataclasses.replace(cell.budget.ratio, trunk=str(evaluator_file)))
    cells = [dataclasses.replace(cell, method="tiw_dsm@trunk", budget=budget)]
    trained = []
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: trained.append(a), raising=False)
    with pytest.raises(ConfigError, match="trunk_knows_labels"):
        preflight(cells)
    assert not trained
    # the config carries the trunk file (a record says which trunk it used); without one, configs as before
    assert cells[0].config()["ratio"]["trunk"] == str(evaluator_file)
    plain = expand(load_suite("smoke"), "smoke", ["digits_lt"])[0]
    assert "trunk" not in json.dumps(plain.config()["ratio"])


def _record(method, provider="learned", knows=False, value=0.1, seed=0):
    ratio = {"provider": provider, **({"trunk": "ev.pt", "trunk_knows_labels": True} if knows else {})}
    return {"suite": "s", "dataset": "digits_lt", "method": method, "ref_frac": 0.05, "seed": seed, "status": "ok",
            "profile": "paper", "config_hash": f"h{method}{seed}", "config": {"ratio": ratio, "metrics": ["bias"]},
            "metrics": [{"name": "bias", "value": value + seed * 0.01, "higher_is_better": False}]}


def test_reports_mark_the_cells_whose_trunk_knows_the_labels(tmp_path):
    from tiwbench.report.labels import LABEL_MARK, mark_label_trunks
    from tiwbench.report.render import render

    records = [_record("tiw_dsm@trunk", knows=True, seed=s) for s in range(2)]
    records += [_record("tiw_dsm", provider="trunk", knows=True, seed=s) for s in range(2)]
    records += [_record("dsm_ref", knows=True, seed=s) for s in range(2)]  # no ratio: no trunk, not marked
    records += [_record("tiw_dsm@discriminator", knows=True, seed=s) for s in range(2)]  # another estimator
    marked = {r["method"] for r in mark_label_trunks(records)}
    assert marked == {f"tiw_dsm@trunk{LABEL_MARK}", f"tiw_dsm{LABEL_MARK}", "dsm_ref", "tiw_dsm@discriminator"}
    from tiwbench.report.leaderboard import aggregate, records_frame

    agg = aggregate(records_frame(mark_label_trunks(records)))
    text = render(agg, "markdown", records)
    assert f"tiw_dsm@trunk{LABEL_MARK}" in text and "knows the labels the bias metric counts" in text
    # never ranked: a reference row, as the ceilings are
    assert f"tiw_dsm@trunk{LABEL_MARK} (ceiling)" in text and "tiw_dsm@discriminator (ceiling)" not in text
    # unmarked records: no marker, no legend line
    plain = [_record("tiw_dsm@trunk", seed=s) for s in range(2)]
    text = render(aggregate(records_frame(plain)), "markdown", plain)
    assert LABEL_MARK not in text and "knows the labels" not in text


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits_lt", "cifar10_lt"])
def test_the_trunk_smoke_cell_on_images(tmp_path, dataset, request):
    from test_image_smoke import _check, _run

    args = ["--dataset", dataset]
    if dataset == "cifar10_lt":
        args += ["--data-root", str(request.getfixturevalue("cifar")[0] / "tar_root")]
    proc = _run(tmp_path, *args, method="tiw_dsm@trunk")
    if dataset == "cifar10_lt":
        rec = _check(tmp_path, dataset, proc, method="tiw_dsm@trunk")
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        rec = json.loads((tmp_path / "runs" / "smoke" / dataset / "tiw_dsm@trunk" / "ref0.05_seed0" /
                          "record.json").read_text())
    assert rec["status"] == "ok"
    assert rec["ratio"]["time@trunk"]["trunk"]["features"].startswith("observed-data denoiser")
