"""Pretrained trunk files for the `trunk` estimators on images (``ratio.trunk``).

A trunk file is a noise-conditional network of the project's U-Net: PATH holds its weights as the project
saves networks (``save_network``'s ``{"ema": state_dict, ...}``, or a bare state_dict), PATH.json its
architecture, ``{"architecture": "UNet", "kwargs": {...}}`` (:func:`save_trunk` writes both). The evaluator's
classifier (an EvalCNN file, as the evaluator cache writes it) is a trunk only with the explicit opt-in
``ratio.trunk_knows_labels``: it was trained on the labels the bias metric counts. Every check runs in the
runner's preflight (:func:`check_trunk_file`), before any training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from tiwbench.config import ConfigError

OPT_IN = "ratio.trunk_knows_labels"


def save_trunk(path: str | Path, net: nn.Module) -> None:
    """A U-Net as a trunk file: its weights (as ``save_network`` stores a network) and the PATH.json sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "info": "{}"}, path)
    Path(f"{path}.json").write_text(json.dumps({"architecture": "UNet", "kwargs": net.kwargs}))


def _sidecar(path: Path) -> dict:
    side = Path(f"{path}.json")
    fix = ("give a U-Net saved as a trunk file (tiwbench.ratios.trunk_file.save_trunk: PATH and PATH.json), "
           "or ratio.trunk: '' for the observed-data denoiser")
    if not path.is_file():
        raise ConfigError(f"ratio.trunk: no file at {path}; {fix}")
    if not side.is_file():
        raise ConfigError(f"ratio.trunk: {path} has no architecture sidecar {side}; {fix}")
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"ratio.trunk: {side} is not JSON ({e}); {fix}") from None


def _state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("ema"), dict):
        state = state["ema"]
    if state and all(k.startswith("model.") for k in state):  # an EDMPrecond's: the raw network inside
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def load_trunk(cfg, dataset) -> tuple[nn.Module, bool]:
    """The frozen trunk ``cfg.trunk`` names for ``dataset`` and whether it knows the labels (the evaluator's
    classifier); a one-line ConfigError naming the fix for a missing file, another architecture or resolution,
    or the evaluator's classifier without the opt-in."""
    path = Path(cfg.trunk)
    if dataset.kind == "vector":
        raise ConfigError(f"ratio.trunk names a trunk file, which serves image datasets; for {dataset.name!r} set "
                          "ratio.trunk: '' (the observed-data denoiser)")
    meta = _sidecar(path)
    arch, kwargs = meta.get("architecture"), meta.get("kwargs") or {}
    c, h, _ = dataset.shape
    if arch == "EvalCNN":
        if not cfg.trunk_knows_labels:
            raise ConfigError(f"ratio.trunk: {path} is the evaluator's classifier, trained on the labels the bias "
                              f"metric counts; set {OPT_IN}: true to measure it (its cells are marked), or give a "
                              "U-Net trunk file")
        from tiwbench.data.evaluator import load_classifier

        net: nn.Module = EvaluatorTrunk(load_classifier(path), dataset.sigma_data)
        knows = True
    elif arch == "UNet":
        from tiwbench.diffusion.unet import UNet

        got = (kwargs.get("in_channels"), kwargs.get("resolution"))
        if got != (c, h):
            raise ConfigError(f"ratio.trunk: {path} is a U-Net for {got[0]} channels at {got[1]}×{got[1]}, "
                              f"{dataset.name!r} has {c} at {h}×{h}; give a trunk trained at the dataset's resolution")
        try:
            net = UNet(**kwargs)
            net.load_state_dict(_state(path))
        except (TypeError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"ratio.trunk: {path}'s weights do not fit the U-Net its sidecar describes ({first}); "
                              "save the trunk with save_trunk") from None
        knows = False
    else:
        raise ConfigError(f"ratio.trunk: {path} describes architecture {arch!r}, not 'UNet'; give a U-Net trunk "
                          "file (or an evaluator classifier with " + OPT_IN + ": true)")
    if cfg.trunk_knows_labels and not knows:
        raise ConfigError(f"{OPT_IN} is set but ratio.trunk {path} is not the evaluator's classifier; drop the opt-in")
    return net.eval().requires_grad_(False), knows


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_trunk_file(cfg, dataset) -> None:
    """Preflight: :func:`load_trunk` without keeping the network; the opt-in without a trunk file is refused."""
    if cfg.trunk:
        load_trunk(cfg, dataset)
    elif cfg.trunk_knows_labels:
        raise ConfigError(f"{OPT_IN} is set without ratio.trunk; name the evaluator's classifier file in ratio.trunk "
                          "or drop the opt-in")


class EvaluatorTrunk(nn.Module):
    """The evaluator's classifier as a trunk: its pooled features of the image at the input's scale (x_in·σ_data
    is the [-1, 1] image at σ = 0, as it was trained); it is not noise-conditional, the head is."""

    def __init__(self, classifier: nn.Module, sigma_data: float):
        super().__init__()
        self.classifier, self.sigma_data = classifier, sigma_data
        self.feature_dim = classifier.feature_dim

    def features(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x_in * self.sigma_data)
