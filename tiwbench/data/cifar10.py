"""``cifar10_lt``: CIFAR-10 train set, long-tailed D_bias (METHOD.md §8). Reads the standard
python archive (``cifar-10-python.tar.gz``) or its extracted ``cifar-10-batches-py/``; never downloads."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiwbench.data.base import DataError
from tiwbench.data.images import LabelledImageDataset, require_path
from tiwbench.data.mixtures import long_tail_weights

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
HOW = ("download it from https://www.cs.toronto.edu/~kriz/cifar.html and pass the directory that holds it "
       "with --data-root (or suite: dataset_params.cifar10_lt.data_root)")

# The batches are pickles: only numpy's array reconstruction may run while loading them.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes in protocol-2 pickles


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")
        if module == "numpy.core.multiarray":  # the archive's name for it; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: b"data" uint8 [N, 3072] (R, G, B planes of 32×32) and b"labels" [N]."""
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{where} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); {HOW}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{where} lacks the keys b'data' and b'labels' of a CIFAR-10 batch; {HOW}")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(f"{where}: b'data' is {data.dtype} {data.shape} with {labels.shape} labels; expected "
                        f"uint8 [N, 3072] and N labels; {HOW}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: labels outside 0..9; {HOW}")
    return data, labels.astype(np.int64)


def find_source(data_root: str | Path) -> Path:
    """The archive or the extracted folder, under ``data_root`` (or ``data_root`` itself)."""
    root = require_path(data_root, f"a directory holding {ARCHIVE} or {FOLDER}/", HOW)
    for p in (root / FOLDER, root / ARCHIVE, root):
        if p.is_dir() and all((p / b).is_file() for b in TRAIN_BATCHES):
            return p
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")):
            return p
    raise DataError(f"expected {ARCHIVE} or {FOLDER}/ (with {', '.join(TRAIN_BATCHES)}) under {root}, "
                    f"found neither; {HOW}")


def read_train_set(source: Path) -> tuple[np.ndarray, np.ndarray]:
    raws: dict[str, bytes] = {}
    if source.is_dir():
        for b in TRAIN_BATCHES:
            raws[b] = (source / b).read_bytes()
    else:
        try:
            with tarfile.open(source) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for b in TRAIN_BATCHES:
                    if b not in members:
                        raise DataError(f"archive {source} has no member {FOLDER}/{b}; {HOW}")
                    raws[b] = tar.extractfile(members[b]).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            why = " ".join(str(e).split())  # tarfile lists one line per method tried
            raise DataError(f"archive {source} is malformed or truncated ({why}); {HOW}") from None
    parts = [read_batch(raws[b], f"{source}:{b}") for b in TRAIN_BATCHES]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CIFAR10LT(LabelledImageDataset):
    """D_bias: ``n_bias`` train images with class k ∝ ρ^{k/9} (airplane the head); D_ref
    class-balanced and disjoint; target and oracle: the full 50k train set."""

    name = "cifar10_lt"
    shape = (3, 32, 32)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    defaults: dict[str, Any] = {
        "data_root": "data/cifar10",  # directory holding cifar-10-python.tar.gz or cifar-10-batches-py/
        "rho": 0.01,  # tail/head class ratio (the usual CIFAR-10-LT profile; the paper's is unverified)
        "n_bias": 10000,  # |D_bias|
    }
    evaluator_config = {**LabelledImageDataset.evaluator_config, "width": 32, "epochs": 15, "batch_size": 256,
                        "holdout": 0.1, "flip": True}

    def __init__(self, **params: Any):
        super().__init__(**params)
        if not 0 < self.params["rho"] <= 1 or int(self.params["n_bias"]) < 1:
            raise DataError(f"cifar10_lt needs 0 < rho <= 1 and n_bias >= 1; got {self.params}")

    def load_key(self) -> tuple:
        source = find_source(self.params["data_root"])
        stats = [(source / b).stat() for b in TRAIN_BATCHES] if source.is_dir() else [source.stat()]
        return (str(source.resolve()), tuple((s.st_size, s.st_mtime_ns) for s in stats))

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        data, labels = read_train_set(find_source(self.params["data_root"]))
        images = torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 127.5 - 1
        return images, torch.from_numpy(labels)

    def bias_weights(self) -> torch.Tensor:
        return long_tail_weights(self.num_classes, float(self.params["rho"]))
