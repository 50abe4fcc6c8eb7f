"""Load time of ffhq_gender from a folder of PNGs: decoding every image vs mapping the decoded cache.

    python tests/benchmarks/ffhq_load.py --n 3000 --size 128 --resolution 64
    python tests/benchmarks/ffhq_load.py --signature-only 70000   # the cache key's cost on 70k files

Prints one JSON line per measurement. Not part of the test run.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    for i in range(n):  # smooth-ish faces stand-ins: PNG compresses them like photographs, not like noise
        arr = np.roll(base, i, axis=1) // 2 + rng.integers(0, 64, size=(size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        (images / f"{i:05d}.png").write_bytes(buf.getvalue())
    (root / "labels.csv").write_text("image,gender\n" + "".join(f"{i:05d},{'fm'[i % 2]}\n" for i in range(n)))
    return images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--signature-only", type=int, default=0)
    args = ap.parse_args()
    from tiwbench.data import ffhq

    root = Path(tempfile.mkdtemp(prefix="ffhq-bench-"))
    try:
        if args.signature_only:
            d = root / "many"
            d.mkdir()
            for i in range(args.signature_only):
                (d / f"{i:05d}.png").write_bytes(b"x" * (i % 97 + 1))
            t0 = time.perf_counter()
            _, _, sig = ffhq.index_images(d)
            print(json.dumps({"files": len(sig), "signature_s": round(time.perf_counter() - t0, 3)}))
            return
        images = make_folder(root, args.n, args.size)
        mb = sum(p.stat().st_size for p in images.iterdir()) / 2**20
        ds = dict(data_root=str(images), labels=str(root / "labels.csv"), resolution=args.resolution)
        for what in ("decode (no cache yet: decodes, then writes it)", "mapped cache", "mapped cache"):
            t0 = time.perf_counter()
            x, y = ffhq.FFHQGender(**ds).load()
            print(json.dumps({"load": what, "images": len(x), "png_mb": round(mb, 1), "size": args.size,
                              "resolution": args.resolution, "seconds": round(time.perf_counter() - t0, 3)}))
        t0 = time.perf_counter()
        ffhq.read_images(images, ffhq.read_labels(root / "labels.csv"), args.resolution)
        print(json.dumps({"load": "decode only (before this cache)", "seconds": round(time.perf_counter() - t0, 3)}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
