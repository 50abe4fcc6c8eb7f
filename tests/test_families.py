"""Generator families as an axis: a GAN cell is a cell like any other (same record schema, metrics, reference
levels, resumability), and a third party's family arrives through its entry-point group."""

from __future__ import annotations

import json
import sys

import pytest

from tiwbench.config import load_suite
from tiwbench.registry import FAMILIES, METHODS
from tiwbench.sweep.runner import existing_record, expand, run_cells
from tiwbench.training.families import Family

SUITE = """
name: fam
datasets: [toy2d]
methods: [dsm_ref, gan_ref, tiw_gan, iw_vae]
ref_fracs: [0.05]
seeds: [0]
metrics: [fd, bias, memorized]
ratio: exact
profiles:
  default:
    toy2d:
      train: {steps: 40, batch_size: 64, hidden: 32, depth: 2, lr_warmup: 5, ema_halflife: 5, select_every: 20,
              select_n: 200}
      sample: {n: 300, steps: 6, batch_size: 300}
"""


def _cells(tmp_path, methods=None, text=SUITE):
    p = tmp_path / "fam.yaml"
    p.write_text(text)
    return expand(load_suite(str(p)), methods=methods)


def _schema(obj, prefix=""):
    """The set of key paths of a record (lists of metric dicts keyed by their name)."""
    keys = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.add(prefix + k)
            keys |= _schema(v, prefix + k + ".")
    elif isinstance(obj, list) and obj and all(isinstance(m, dict) and "name" in m for m in obj):
        for m in obj:
            keys |= _schema({kk: vv for kk, vv in m.items() if kk != "name"}, prefix + m["name"] + ".")
    return keys


def _record(out, cell):
    rec = existing_record(cell, out)
    assert rec is not None, cell.label()
    return rec


def test_every_method_names_a_registered_family():
    for name in METHODS.names():
        assert METHODS.get(name).family in FAMILIES.names(), name
    assert METHODS.get("gan_tiw") is METHODS.get("tiw_gan")  # the other spelling


def test_gan_cell_record_has_the_score_cells_schema(tmp_path, one_thread):
    cells = _cells(tmp_path)
    out = tmp_path / "runs"
    summary = run_cells(cells, out)
    assert not summary["failed"], summary
    recs = {c.method: _record(out, c) for c in cells}
    score = _schema(recs["dsm_ref"])
    for other in ("gan_ref", "iw_vae"):
        # the same keys everywhere except the training statistics, which are each family's own
        keys = {k for k in _schema(recs[other]) if not k.startswith(("train.", "timing.", "ratio."))}
        assert keys == {k for k in score if not k.startswith(("train.", "timing.", "ratio."))}, other
        names = [m["name"] for m in recs[other]["metrics"]]
        assert names == [m["name"] for m in recs["dsm_ref"]["metrics"]]
    assert {"fd", "bias", "memorized", "bias_ref_level", "bias_ref", "fd_ref_level"} <= set(names)
    assert recs["gan_ref"]["train"]["selection"]["step"] in (20, 40)  # checkpoint selection works for a GAN too
    assert "collapsed" in recs["gan_ref"]["train"] and "ratio" in recs["tiw_gan"]
    assert recs["tiw_gan"]["train"]["ess"] < 1.0  # its weights were used
    # resumability: a second run finds every cell recorded
    again = run_cells(_cells(tmp_path), out)
    assert len(again["skipped"]) == len(cells) and not again["ok"]


def test_gan_network_file_restores_a_preempted_cell(tmp_path, one_thread, monkeypatch):
    """The finished network saved before sampling (a preemption after training) is restored, for a GAN as
    for a score network: the second run trains nothing and samples the same generator."""
    from tiwbench.records import RECORD_NAME
    from tiwbench.sweep import runner

    saved = {}
    real_save = runner.save_network

    def keep(p, ema, info):
        real_save(p, ema, info)
        saved["bytes"] = p.read_bytes()

    monkeypatch.setattr(runner, "save_network", keep)
    cells = _cells(tmp_path, methods=["gan_ref"])
    out = tmp_path / "runs"
    run_cells(cells, out)
    rec = _record(out, cells[0])
    path = next(out.rglob(RECORD_NAME))
    network = path.parent / f"network-{cells[0].hash}.pt"
    assert not network.exists() and saved  # removed once the record is written
    path.unlink()  # a cell preempted after training: its network file is there, its record not yet
    network.write_bytes(saved["bytes"])
    run_cells(_cells(tmp_path, methods=["gan_ref"]), out)
    restored = json.loads(path.read_text())
    assert restored["train"].get("restored_network") is True
    assert [m["value"] for m in restored["metrics"]] == [m["value"] for m in rec["metrics"]]


FAMILY_PLUGIN = '''
import torch
from tiwbench.training.families import Family


class MeanModel(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(dim))
        self.log_std = torch.nn.Parameter(torch.zeros(dim))


class Gaussian(Family):
    """one Gaussian fitted by its moments (a third party's family)"""

    name = "gaussian"

    def make_model(self, dataset, cfg, kernel=None, method=None):
        return MeanModel(dataset.shape[0])

    def train(self, method, model, x, is_ref, ratio, cfg, generator, device="cpu", progress=None,
              checkpoint=None, snapshots=None):
        with torch.no_grad():
            model.mean.copy_(x.mean(0))
            model.log_std.copy_(x.std(0).log())
        return model, {"final_loss": 0.0}

    def sample(self, sampler_model, latents, kernel, cfg):
        with torch.no_grad():
            return sampler_model.mean + sampler_model.log_std.exp() * latents
'''

METHOD_PLUGIN = '''
from tiwbench.training.methods import Method


class MomentRef(Method):
    """moments of D_ref"""

    name = "moment_ref"
    family = "gaussian"
    train_on = "ref"
'''


def test_third_party_family_arrives_through_the_entry_point_group(install_plugin, tmp_path, one_thread):
    install_plugin(FAMILIES, "tiwbench.families", "gaussian_family_plugin", FAMILY_PLUGIN,
                   "gaussian = gaussian_family_plugin:Gaussian")
    install_plugin(METHODS, "tiwbench.methods", "moment_ref_plugin", METHOD_PLUGIN,
                   "moment_ref = moment_ref_plugin:MomentRef")
    try:
        assert issubclass(FAMILIES.get("gaussian"), Family)
        assert FAMILIES.origin("gaussian") == "entry point gaussian_family_plugin:Gaussian"
        cells = _cells(tmp_path, methods=["dsm_ref", "moment_ref"])
        out = tmp_path / "runs"
        summary = run_cells(cells, out)
        assert not summary["failed"], summary
        recs = {c.method: _record(out, c) for c in cells}
        assert [m["name"] for m in recs["moment_ref"]["metrics"]] == [m["name"] for m in recs["dsm_ref"]["metrics"]]
        # fd compares two moments, which a Gaussian fitted to D_ref's moments matches: at its reference level
        # (an untrained one, N(0, I), is ~0.17 away from the ring's covariance)
        values = {m["name"]: m["value"] for m in recs["moment_ref"]["metrics"]}
        assert values["fd"] < 3 * values["fd_ref_level"], values
    finally:
        sys.modules.pop("gaussian_family_plugin", None)
        sys.modules.pop("moment_ref_plugin", None)


def test_a_kernel_on_a_method_of_a_family_without_one_is_refused():
    from tiwbench.config import ConfigError
    from tiwbench.sweep.runner import check_method_name

    check_method_name("tiw_dsm~rf")
    with pytest.raises(ConfigError, match="gan family trains under no perturbation kernel; drop '~rf'"):
        check_method_name("tiw_gan~rf")


def test_unknown_family_is_named_with_the_fix():
    from tiwbench.registry import RegistryError

    with pytest.raises(RegistryError, match="unknown family 'gann'. Did you mean 'gan'"):
        FAMILIES.get("gann")
