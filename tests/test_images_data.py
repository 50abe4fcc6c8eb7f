"""Image datasets built from small files in the real formats (CIFAR-10 python pickles in a tar.gz and
extracted; PNG folders and zips with CSV/JSON labels), the digits grid, errors, and the evaluator."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from cifar_format import cifar_batches, write_cifar_archive, write_cifar_folder

from tiwbench.data.base import DataError
from tiwbench.data.cifar10 import CIFAR10LT
from tiwbench.data.digits import DigitsLT
from tiwbench.data.ffhq import FFHQGender
from tiwbench.registry import DATASETS

PER_BATCH = 300  # 5 batches: 1,500 images, 150 a class


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Both layouts: ``tar_root/cifar-10-python.tar.gz`` and ``dir_root/cifar-10-batches-py/``."""
    base = tmp_path_factory.mktemp("cifar")
    batches = cifar_batches(PER_BATCH)
    write_cifar_folder(base / "dir_root" / "cifar-10-batches-py", batches)
    write_cifar_archive(base / "tar_root", batches)
    return base, batches


def _lt(root, **kw):
    return CIFAR10LT(data_root=str(root), rho=0.1, n_bias=500, **kw)


def test_cifar_pixels_follow_the_documented_layout(cifar):
    base, batches = cifar
    images, labels = _lt(base / "tar_root").data()
    assert images.shape == (5 * PER_BATCH, 3, 32, 32) and images.dtype == torch.float32
    raw = batches["data_batch_2"][b"data"][7]  # image 307: R, G, B planes of 32×32, row-major
    c, h, w = 2, 5, 30
    assert images[PER_BATCH + 7, c, h, w].item() == pytest.approx(raw[c * 1024 + h * 32 + w] / 127.5 - 1)
    assert labels[PER_BATCH + 7].item() == batches["data_batch_2"][b"labels"][7]
    assert images.min() >= -1 and images.max() <= 1


def test_cifar_archive_and_folder_agree(cifar):
    base, _ = cifar
    a, b = _lt(base / "tar_root").split(0.1, 3), _lt(base / "dir_root").split(0.1, 3)
    assert a.hashes == b.hashes


def test_cifar_long_tail_profile_matches_rho(cifar):
    base, _ = cifar
    rho, n_bias = 0.1, 500
    s = _lt(base / "tar_root").split(0.05, 0)
    counts = torch.bincount(s.bias_labels, minlength=10).double()
    w = torch.tensor([rho ** (k / 9) for k in range(10)], dtype=torch.float64)
    expected = n_bias * w / w.sum()
    assert counts.sum() == n_bias
    assert (counts - expected).abs().max() < 1  # rounding only
    assert counts[9] / counts[0] == pytest.approx(rho, rel=0.1)


def test_cifar_split_is_disjoint_balanced_and_seeded(cifar):
    base, _ = cifar
    ds = _lt(base / "tar_root")
    bias_idx, ref_idx = ds.split_indices(0.25, 0)
    assert len(set(bias_idx.tolist()) & set(ref_idx.tolist())) == 0
    assert len(set(bias_idx.tolist())) == len(bias_idx) == 500
    assert len(ref_idx) == 125
    ref_counts = torch.bincount(_lt(base / "tar_root").split(0.25, 0).ref_labels, minlength=10)
    assert ref_counts.max() - ref_counts.min() <= 1 and ref_counts.sum() == 125
    assert ds.split(0.25, 0).hashes == _lt(base / "dir_root").split(0.25, 0).hashes
    other = ds.split(0.25, 1).hashes
    assert other["bias"] != ds.split(0.25, 0).hashes["bias"] and other["ref"] != ds.split(0.25, 0).hashes["ref"]
    assert other["oracle"] == ds.split(0.25, 0).hashes["oracle"]  # the target is the full set, whatever the seed
    assert len(ds.split(0.25, 0).oracle) == 5 * PER_BATCH


def test_cifar_missing_and_malformed_inputs(tmp_path, cifar):
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*cs\.toronto\.edu"):
        CIFAR10LT(data_root=str(tmp_path / "nowhere")).split(0.1, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cs.toronto.edu"):
        CIFAR10LT(data_root=str(tmp_path / "empty")).split(0.1, 0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(b"this is not a gzip file" * 10)
    with pytest.raises(DataError, match="malformed.*download"):
        CIFAR10LT(data_root=str(bad)).split(0.1, 0)
    good = (cifar[0] / "tar_root" / "cifar-10-python.tar.gz").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "cifar-10-python.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="download"):
        CIFAR10LT(data_root=str(cut)).split(0.1, 0)
    wrong = tmp_path / "wrong" / "cifar-10-batches-py"
    wrong.mkdir(parents=True)
    for i in range(1, 6):
        bad_batch = {b"data": np.zeros((3, 10), np.uint8), b"labels": [0] * 3}
        (wrong / f"data_batch_{i}").write_bytes(pickle.dumps(bad_batch))
    with pytest.raises(DataError, match=r"uint8 \[N, 3072\]"):
        CIFAR10LT(data_root=str(wrong.parent)).split(0.1, 0)


def test_cifar_pickle_may_not_run_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("should not run",))

    root = tmp_path / "evil" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Boom(), b"labels": []}))
    with pytest.raises(DataError, match="refusing"):
        CIFAR10LT(data_root=str(root.parent)).split(0.1, 0)


def test_infeasible_ref_frac_names_the_largest_feasible(cifar):
    ds = CIFAR10LT(data_root=str(cifar[0] / "tar_root"), rho=0.1, n_bias=550)
    with pytest.raises(DataError, match="largest feasible ref_frac") as err:
        ds.split(0.5, 0)
    largest = float(str(err.value).split("largest feasible ref_frac ")[1].split()[0])
    ds.split(largest, 0)  # fits
    with pytest.raises(DataError):
        ds.split(largest + 0.01, 0)


# -- digits ----------------------------------------------------------------------------------------

def test_digits_grid_fits_disjointly():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = DigitsLT()
    images, labels = ds.data()
    assert images.shape == (1797, 1, 8, 8)
    torch.testing.assert_close(images[5, 0], torch.as_tensor(d.images[5], dtype=torch.float32) / 8 - 1)
    for f in (0.05, 0.1, 0.25, 0.5):
        bias_idx, ref_idx = ds.split_indices(f, 0)
        assert len(bias_idx) == 600 and len(ref_idx) == round(f * 600)
        assert not set(bias_idx.tolist()) & set(ref_idx.tolist())
        ref_counts = np.bincount(d.target[ref_idx.numpy()], minlength=10)
        assert ref_counts.max() - ref_counts.min() <= 1
        bias_counts = np.bincount(d.target[bias_idx.numpy()], minlength=10)
        assert bias_counts[0] / bias_counts[9] == pytest.approx(1 / 0.1, rel=0.1)  # head/tail = 1/ρ
    s = ds.split(0.05, 0)
    assert len(s.oracle) == 1797 and s.bias.min() >= -1 and s.bias.max() <= 1
    assert s.bias_labels.dtype == torch.int64
    with pytest.raises(DataError, match="largest feasible ref_frac"):
        ds.split(0.9, 0)


def test_registry_and_suite_know_the_image_datasets():
    from tiwbench.config import load_suite, resolve_budget

    for name in ("digits_lt", "cifar10_lt", "ffhq_gender"):
        cls = DATASETS.get(name)
        assert cls.kind == "image" and cls.sigma_data == 0.5
    assert "digits_lt" in load_suite("ref_size_digits").datasets
    suite = load_suite("ref_size")
    budget, seeds = resolve_budget(suite, "paper", "cifar10_lt")
    assert budget.train.channel_mult == [2, 2, 2] and budget.sample.n == 50000 and budget.sample.steps == 18
    budget, _ = resolve_budget(suite, "paper", "ffhq_gender")
    assert budget.sample.steps == 40


# -- ffhq ------------------------------------------------------------------------------------------

N_FACES = 60  # 36 female, 24 male


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from PIL import Image

    base = tmp_path_factory.mktemp("faces")
    folder = base / "images"
    folder.mkdir()
    genders = ["female" if i < 36 else "male" for i in range(N_FACES)]
    rng = np.random.default_rng(0)
    zpath = base / "images.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, g in enumerate(genders):
            arr = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            arr[..., 0] = 255 if g == "female" else 0  # the red channel encodes the label
            ext = "png" if i % 2 else "jpg"
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG" if ext == "png" else "JPEG", quality=95)
            (folder / f"{i:05d}.{ext}").write_bytes(buf.getvalue())
            zf.writestr(f"images/{i:05d}.{ext}", buf.getvalue())
    (base / "labels.csv").write_text("image,gender\n" + "".join(f"{i:05d}.png,{g}\n" for i, g in enumerate(genders)))
    (base / "labels.json").write_text(json.dumps({f"{i:05d}": g[0] for i, g in enumerate(genders)}))
    return base, genders


def _faces(base, root="images", labels="labels.csv", **kw):
    return FFHQGender(data_root=str(base / root), labels=str(base / labels), resolution=8, n_bias=20, **kw)


def test_ffhq_folder_zip_csv_json_agree(faces):
    base, genders = faces
    a = _faces(base).split(0.5, 0)
    assert a.hashes == _faces(base, root="images.zip").split(0.5, 0).hashes
    assert a.hashes == _faces(base, labels="labels.json").split(0.5, 0).hashes
    assert a.bias.shape[1:] == (3, 8, 8)
    # labels travel with their images: red high <=> female (class 0)
    red = a.bias[:, 0].mean(dim=(1, 2))
    assert torch.equal(red > 0, a.bias_labels == 0)


def test_ffhq_majority_ref_and_target(faces):
    base, _ = faces
    for majority in (0.8, 0.9):
        ds = _faces(base, majority=majority)
        s = ds.split(0.5, 1)
        counts = torch.bincount(s.bias_labels, minlength=2).tolist()
        assert counts == [round(20 * majority), 20 - round(20 * majority)]
        assert torch.bincount(s.ref_labels, minlength=2).tolist() == [5, 5]
        b, r = ds.split_indices(0.5, 1)
        assert not set(b.tolist()) & set(r.tolist())
        _, target_labels = ds.target_data()
        assert torch.bincount(target_labels, minlength=2).tolist() == [24, 24]  # all 24 males, 24 of 36 females
    s = _faces(base, majority_gender="male").split(0.25, 0)
    assert torch.bincount(s.bias_labels, minlength=2).tolist() == [4, 16]
    assert ds.target_proportions.tolist() == [0.5, 0.5]


def test_ffhq_missing_and_malformed_labels(tmp_path, faces):
    base, _ = faces
    with pytest.raises(DataError, match="image,gender"):
        _faces(base, labels="nope.csv").split(0.1, 0)
    with pytest.raises(DataError, match="--data-param labels=FILE"):
        FFHQGender(data_root=str(base / "images"), resolution=8).split(0.1, 0)
    (tmp_path / "bad.csv").write_text("file,sex\n00001,female\n")
    with pytest.raises(DataError, match="not `image,gender`"):
        FFHQGender(data_root=str(base / "images"), labels=str(tmp_path / "bad.csv"), resolution=8).split(0.1, 0)
    (tmp_path / "odd.csv").write_text("image,gender\n00001,unknown\n")
    with pytest.raises(DataError, match="female/male"):
        FFHQGender(data_root=str(base / "images"), labels=str(tmp_path / "odd.csv"), resolution=8).split(0.1, 0)
    with pytest.raises(DataError, match="folder or a .zip"):
        FFHQGender(data_root=str(tmp_path / "none"), labels=str(base / "labels.csv"), resolution=8).split(0.1, 0)


# -- evaluator -------------------------------------------------------------------------------------

def test_digits_evaluator_accuracy_and_cache(tmp_path, one_thread):
    ds = DigitsLT()
    ev = ds.evaluator(cache_dir=str(tmp_path))
    assert ev.info["accuracy"] >= 0.95 and ev.info["held_out"] == round(0.2 * 1797)
    assert not ev.loaded_from_cache
    files = sorted(p.name for p in (tmp_path / "evaluators").iterdir())
    assert len(files) == 2 and files[1] == files[0] + ".json"  # state_dict + sidecar, no temp files left
    again = ds.evaluator(cache_dir=str(tmp_path))
    assert again.loaded_from_cache and again.info["checkpoint_hash"] == ev.info["checkpoint_hash"]
    x, y = ds.target_data()
    f = again.features(x[:50])
    assert f.dtype == torch.float64 and f.shape == (50, ev.feature_dim)
    torch.testing.assert_close(f, ev.features(x[:50]))
    assert (again.predict(x) == y).double().mean() > 0.95
    mean, cov = ev.target_stats()
    feats = ev.features(x).numpy()
    np.testing.assert_allclose(mean.numpy(), feats.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cov.numpy(), np.cov(feats, rowvar=False), rtol=1e-7, atol=1e-9)
    assert ev.target_proportions.tolist() == [0.1] * 10 and ev.num_classes == 10


def test_image_evaluator_on_tiny_cifar_without_cache(cifar, monkeypatch):
    monkeypatch.setattr(CIFAR10LT, "evaluator_config", {**CIFAR10LT.evaluator_config, "epochs": 1, "width": 8})
    ev = _lt(cifar[0] / "tar_root").evaluator(cache_dir=None)
    assert ev.target.shape == (1500, 3, 32, 32) and ev.num_classes == 10
    assert 0 <= ev.info["accuracy"] <= 1 and len(ev.info["checkpoint_hash"]) == 16
