"""``ffhq_gender``: face images with a gender-biased D_bias (METHOD.md §8). The images (a folder or a
zip of PNG/JPG) and the per-image gender labels are supplied by the user; nothing is downloaded."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from tiwbench.data.base import DataError
from tiwbench.data.images import LabelledImageDataset, require_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
HOW_IMAGES = ("expected a folder or a .zip of PNG/JPG face images (e.g. FFHQ from "
              "https://github.com/NVlabs/ffhq-dataset); pass it with --data-root "
              "(or suite: dataset_params.ffhq_gender.data_root)")
HOW_LABELS = ("expected a labels file: a CSV with header `image,gender` or a JSON object {image id: gender}, "
              "gender being female/male (or f/m, 0/1 = female/male); pass it as labels with --data-param labels=FILE "
              "(or suite: dataset_params.ffhq_gender.labels)")
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


def read_images(root: Path, wanted: dict[str, int], resolution: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Decoded images that have a label, in sorted id order, their labels and the number of images seen."""
    entries: dict[str, Any] = {}
    if root.is_dir():
        for f in root.rglob("*"):
            if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                entries.setdefault(image_id(f.name), f)
        reader = Path.read_bytes
    elif zipfile.is_zipfile(root):
        zf = zipfile.ZipFile(root)
        for n in zf.namelist():
            if PurePosixPath(n).suffix.lower() in IMAGE_EXTS:
                entries.setdefault(image_id(n), n)

        def reader(name):
            return zf.read(name)
    else:
        raise DataError(f"{root} is neither a folder nor a zip archive; {HOW_IMAGES}")
    ids = sorted(set(entries) & set(wanted))
    images = np.empty((len(ids), 3, resolution, resolution), dtype=np.uint8)
    for i, key in enumerate(ids):
        images[i] = _decode(reader(entries[key]), resolution, f"{root}:{entries[key]}")
    return images, np.array([wanted[k] for k in ids], dtype=np.int64), len(entries)


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
        images, labels, seen = read_images(root, wanted, int(self.params["resolution"]))
        if not len(images):
            raise DataError(f"none of the {seen} images under {root} has a label in {labels_path} "
                            f"({len(wanted)} labels); check that the ids match the file names; {HOW_LABELS}")
        missing = [g for k, g in enumerate(self.class_names) if not (labels == k).any()]
        if missing:
            raise DataError(f"no {missing[0]} images among the {len(images)} labelled ones under {root}; "
                            f"both genders are needed (D_ref and the target are 50/50); {HOW_LABELS}")
        return torch.from_numpy(images).float() / 127.5 - 1, torch.from_numpy(labels)

    def bias_weights(self) -> torch.Tensor:
        m = float(self.params["majority"])
        w = torch.tensor([m, 1 - m], dtype=torch.float64)
        return w if self.params["majority_gender"] == "female" else w.flip(0)

    def target_indices(self, labels: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(20240101)  # fixed: the target must not change with the split seed
        per = [torch.nonzero(labels == k).flatten() for k in range(2)]
        n = min(len(p) for p in per)
        return torch.cat([p[torch.randperm(len(p), generator=g)[:n]] for p in per]).sort().values
