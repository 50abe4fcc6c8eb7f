"""CIFAR-10's python release in its real layout (pickled batches, protocol 2, in cifar-10-python.tar.gz and
extracted), filled with seeded random pixels: the tests' data and the GPU session's end-to-end cell.

    python tests/cifar_format.py DIR [PER_BATCH]     (writes DIR/cifar-10-python.tar.gz)
"""

from __future__ import annotations

import pickle
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np


def cifar_batches(per_batch: int = 300, seed: int = 0) -> dict[str, dict]:
    """Five training batches of ``per_batch`` images (classes balanced), the test batch and the meta file."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i in range(1, 6):
        labels = rng.permutation(np.arange(per_batch) % 10)
        batches[f"data_batch_{i}"] = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [int(v) for v in labels],
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
    batches["test_batch"] = batches["data_batch_1"]
    batches["batches.meta"] = {b"label_names": [b"airplane"] * 10}
    return batches


def write_cifar_folder(folder: Path, batches: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    return folder


def write_cifar_archive(root: Path, batches: dict[str, dict]) -> Path:
    """``root/cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/``, as the official download."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        folder = write_cifar_folder(Path(d) / "cifar-10-batches-py", batches)
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz", compresslevel=1) as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    return root / "cifar-10-python.tar.gz"


if __name__ == "__main__":
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    print(write_cifar_archive(Path(sys.argv[1]), cifar_batches(per)))
