"""``ffhq_gender``: face images with a gender-biased D_bias (METHOD.md §8). The images (a folder or a
zip of PNG/JPG) and the per-image gender labels are supplied by the user; nothing is downloaded."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from tiwbench import progress
from tiwbench.data.base import DataError
from tiwbench.data.images import LabelledImageDataset, require_path
from tiwbench.integrity import Damaged, load_or_move_aside
from tiwbench.records import atomic_write_json, shared_temp

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
HOW_IMAGES = ("expected a folder or a .zip of PNG/JPG face images (e.g. FFHQ from "
              "https://github.com/NVlabs/ffhq-dataset); pass it with --data-root "
              "(or suite: dataset_params.ffhq_gender.data_root)")
HOW_LABELS = ("expected a labels file: a CSV with header `image,gender` or a JSON object {image id: gender}, "
              "gender being female/male (or f/m, 0/1 = female/male); pass it as labels with --data-param labels=FILE "
              "(or suite: dataset_params.ffhq_gender.labels)")
DECODED_CACHE_ENV = "TIWBENCH_DECODED_CACHE"
DECODED_VERSION = 1  # bump when decoding or resizing changes, so old caches are not reused
GENDERS = {"female": 0, "f": 0, "woman": 0, "0": 0, "male": 1, "m": 1, "man": 1, "1": 1}


def image_id(name: str) -> str:
    """``images/00012.png`` -> ``00012``: labels may name an image with or without folder and extension."""
    p = PurePosixPath(name.replace("\\", "/"))
    return p.stem if p.suffix.lower() in IMAGE_EXTS else p.name


def read_labels(path: str | Path | None) -> dict[str, int]:
    p = require_path(path, "a gender labels file", HOW_LABELS)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file {p} ({e}); {HOW_LABELS}") from None
    rows: list[tuple[str, Any]]
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"labels file {p} is not valid JSON ({e}); {HOW_LABELS}") from None
        if not isinstance(obj, dict):
            raise DataError(f"labels file {p} holds a JSON {type(obj).__name__}, not an object; {HOW_LABELS}")
        rows = list(obj.items())
    else:
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "image" not in fields or "gender" not in fields:
            raise DataError(f"labels file {p} has header {reader.fieldnames}, not `image,gender`; {HOW_LABELS}")
        reader.fieldnames = fields
        rows = [(r["image"], r["gender"]) for r in reader]
    labels = {}
    for key, value in rows:
        g = GENDERS.get(str(value).strip().lower())
        if g is None or key is None:
            raise DataError(f"labels file {p}: gender {value!r} of image {key!r} is not one of "
                            f"female/male/f/m/0/1; {HOW_LABELS}")
        labels[image_id(str(key).strip())] = g
    if not labels:
        raise DataError(f"labels file {p} has no rows; {HOW_LABELS}")
    return labels


def _decode(raw: bytes, resolution: int, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im = im.convert("RGB")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.LANCZOS)  # antialiased downsampling
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode image {where} ({e}); {HOW_IMAGES}") from None


def index_images(root: Path) -> tuple[dict[str, Any], Callable[[Any], bytes], list[tuple]]:
    """Image id -> file (folder) or member name (zip), a reader of its bytes, and a cheap content
    signature: per file its relative path, size and mtime (folder: one stat each, ~70k stats in well
    under a second, where hashing FFHQ's bytes would read tens of GB), or its name, size and CRC-32 from
    the zip's central directory (content-based, nothing decompressed)."""
    entries: dict[str, Any] = {}
    signature: list[tuple] = []
    if root.is_dir():
        for rel, size, mtime in sorted(_scan(root)):
            entries.setdefault(image_id(rel), root / rel)
            signature.append((rel, size, mtime))
        return entries, Path.read_bytes, signature
    if zipfile.is_zipfile(root):
        zf = zipfile.ZipFile(root)
        for info in zf.infolist():
            if PurePosixPath(info.filename).suffix.lower() in IMAGE_EXTS:
                entries.setdefault(image_id(info.filename), info.filename)
                signature.append((info.filename, info.file_size, info.CRC))
        return entries, zf.read, signature
    raise DataError(f"{root} is neither a folder nor a zip archive; {HOW_IMAGES}")


def _scan(root: Path, prefix: str = ""):
    """(relative path, size, mtime) of every image file under ``root``: one stat per file (scandir
    knows the file type already), which is most of the cost of the signature."""
    with os.scandir(root) as it:
        for e in it:
            if e.is_dir():
                yield from _scan(Path(e.path), f"{prefix}{e.name}/")
            elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                st = e.stat()
                yield f"{prefix}{e.name}", st.st_size, st.st_mtime_ns


def read_images(root: Path, wanted: dict[str, int], resolution: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Decoded images that have a label, in sorted id order, their labels and the number of images seen."""
    entries, reader, _ = index_images(root)
    return _decode_all(root, entries, reader, wanted, resolution)


def _decode_all(root: Path, entries: dict[str, Any], reader, wanted: dict[str, int],
                resolution: int) -> tuple[np.ndarray, np.ndarray, int]:
    ids = sorted(set(entries) & set(wanted))
    images = np.empty((len(ids), 3, resolution, resolution), dtype=np.uint8)
    task = progress.phase("decoding images", len(ids))  # 70k FFHQ images take minutes: say how far
    for i, key in enumerate(ids):
        images[i] = _decode(reader(entries[key]), resolution, f"{root}:{entries[key]}")
        task(i + 1, len(ids))
    return images, np.array([wanted[k] for k in ids], dtype=np.int64), len(entries)


def decoded_cache_dir(root: Path) -> Path:
    """``$TIWBENCH_DECODED_CACHE`` if set, else a folder beside the source (``data/ffhq.decoded``)."""
    return Path(os.environ.get(DECODED_CACHE_ENV) or root.with_name(root.name + ".decoded"))


def cached_images(root: Path, wanted: dict[str, int], resolution: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`read_images` through an on-disk uint8 cache that later runs map instead of decoding.

    Keyed by the source's signature (:func:`index_images`), the labels and the resolution: a changed,
    added or removed image or label gives a new key. ``<key>.npy`` holds [N, 3, r, r] uint8 (mapped
    read-only), ``<key>.json`` the labels; the sidecar is written last, so its presence means the
    array is complete. An unwritable cache folder only costs the decode.
    """
    entries, reader, signature = index_images(root)
    src = {"signature": signature, "labels": sorted(wanted.items()), "resolution": resolution,
           "version": DECODED_VERSION}
    key = hashlib.sha256(json.dumps(src).encode()).hexdigest()[:20]
    folder = decoded_cache_dir(root)
    npy, side = folder / f"{key}-{resolution}px.npy", folder / f"{key}-{resolution}px.json"
    if npy.is_file() and side.is_file():
        hit = load_or_move_aside(npy, lambda p: _map_decoded(p, side), "decoded image cache", companions=(side,))
        if hit is not None:
            return hit
    images, labels, seen = _decode_all(root, entries, reader, wanted, resolution)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = shared_temp(folder, f".{npy.name}.")
        with os.fdopen(fd, "wb") as f:
            np.save(f, images)
        os.replace(tmp, npy)
        atomic_write_json(side, {"labels": labels.tolist(), "seen": seen, "shape": list(images.shape),
                                 "sha256": array_digest(images), "source": str(root)})
    except OSError as e:
        print(f"note: cannot write the decoded image cache under {folder} ({e}); set ${DECODED_CACHE_ENV}",
              file=sys.stderr, flush=True)
    return images, labels, seen


def _map_decoded(npy: Path, side: Path) -> tuple[np.ndarray, np.ndarray, int]:
    meta = json.loads(side.read_text())
    images = np.load(npy, mmap_mode="r")  # a short file fails here (the header says how long it must be)
    if list(images.shape) != meta["shape"] or images.dtype != np.uint8:
        raise Damaged(f"array {images.dtype} {list(images.shape)} is not the uint8 {meta['shape']} recorded")
    # a bit flip keeps the shape: the content hash written with the array catches it (caches written
    # before the hash existed have none, and are rebuilt once)
    if meta.get("sha256") != array_digest(images, progress_name="decoded cache check"):
        raise Damaged("content does not match the sha256 recorded with it")
    return images, np.asarray(meta["labels"], dtype=np.int64), int(meta["seen"])


def array_digest(images: np.ndarray, progress_name: str | None = None, chunk_bytes: int = 1 << 26) -> str:
    """sha256 of the array's bytes, read in chunks (a mapped cache is not loaded whole)."""
    h = hashlib.sha256()
    flat = images.reshape(len(images), -1) if len(images) else images.reshape(0, 1)
    rows = max(1, chunk_bytes // max(flat.shape[1], 1))
    task = progress.phase(progress_name, len(flat)) if progress_name else None
    for i in range(0, len(flat), rows):
        h.update(np.ascontiguousarray(flat[i : i + rows]).tobytes())
        if task is not None:
            task(min(i + rows, len(flat)), len(flat))
    return h.hexdigest()


class FFHQGender(LabelledImageDataset):
    """D_bias: ``n_bias`` faces, a fraction ``majority`` of them of ``majority_gender``; D_ref 50/50
    and disjoint; target and oracle: a gender-balanced set (all of the rarer gender in the data and
    as many of the other, drawn once with a fixed seed)."""

    name = "ffhq_gender"
    class_names = ("female", "male")
    defaults: dict[str, Any] = {
        "data_root": "data/ffhq",  # folder or .zip of PNG/JPG images
        "labels": "",  # CSV (image,gender) or JSON {id: gender}
        "majority": 0.8,  # fraction of D_bias of the majority gender (the paper also uses 0.9)
        "majority_gender": "female",
        "resolution": 64,  # images are resized to resolution × resolution
        "n_bias": 10000,  # |D_bias|
    }
    evaluator_config = {**LabelledImageDataset.evaluator_config, "width": 32, "epochs": 10, "batch_size": 128,
                        "holdout": 0.1, "flip": True}

    def __init__(self, **params: Any):
        super().__init__(**params)
        p = self.params
        if not 0.5 <= p["majority"] < 1 or p["majority_gender"] not in self.class_names:
            raise DataError(f"ffhq_gender needs 0.5 <= majority < 1 and majority_gender in {self.class_names}; got {p}")
        r = int(p["resolution"])
        if r < 4 or r & (r - 1):
            raise DataError(f"ffhq_gender resolution must be a power of two >= 4 (the U-Net halves it); got {r}")
        self.shape = (3, r, r)

    def _paths(self) -> tuple[Path, Path]:
        root = require_path(self.params["data_root"], "a folder or .zip of face images", HOW_IMAGES)
        labels = require_path(self.params["labels"], "a gender labels file", HOW_LABELS)
        return root, labels

    def load_key(self) -> tuple:
        root, labels = self._paths()
        st = [root.stat(), labels.stat()]
        return (str(root.resolve()), str(labels.resolve()), int(self.params["resolution"]),
                tuple((s.st_size, s.st_mtime_ns) for s in st))

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        root, labels_path = self._paths()
        wanted = read_labels(labels_path)
        images, labels, seen = cached_images(root, wanted, int(self.params["resolution"]))
        if not len(images):
            raise DataError(f"none of the {seen} images under {root} has a label in {labels_path} "
                            f"({len(wanted)} labels); check that the ids match the file names; {HOW_LABELS}")
        missing = [g for k, g in enumerate(self.class_names) if not (labels == k).any()]
        if missing:
            raise DataError(f"no {missing[0]} images among the {len(images)} labelled ones under {root}; "
                            f"both genders are needed (D_ref and the target are 50/50); {HOW_LABELS}")
        # astype: the mapped cache is read-only; the float copy is exact either way
        return torch.from_numpy(images.astype(np.float32)) / 127.5 - 1, torch.from_numpy(labels)

    def bias_weights(self) -> torch.Tensor:
        m = float(self.params["majority"])
        w = torch.tensor([m, 1 - m], dtype=torch.float64)
        return w if self.params["majority_gender"] == "female" else w.flip(0)

    def target_indices(self, labels: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(20240101)  # fixed: the target must not change with the split seed
        per = [torch.nonzero(labels == k).flatten() for k in range(2)]
        n = min(len(p) for p in per)
        return torch.cat([p[torch.randperm(len(p), generator=g)[:n]] for p in per]).sort().values
