"""Pictures of a cell's samples, saved beside its record: a grid of the first images (image datasets) or
a scatter over the true modes (2-D mixtures). The runner draws the first samples of one list of
per-sample latents for every method of a seed, so grids of one seed compare image by image."""

from __future__ import annotations

import io
import math

import numpy as np
import torch

GRID_NAME = "samples.png"
GRID_SIZE = 64  # the first 64 samples: 8 × 8
SCATTER_POINTS = 2000


def image_grid(samples: torch.Tensor, n: int = GRID_SIZE, pad: int = 1, min_side: int = 256) -> np.ndarray:
    """The first ``n`` images ([N, C, H, W] in [-1, 1]) as one uint8 H×W×3 array, ⌈√n⌉ a row, white
    gutters; enlarged by an integer factor (nearest neighbour) to at least ``min_side`` pixels so that
    8×8 digits stay visible."""
    x = samples[:n].detach().cpu().float()
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"image_grid needs [N, C, H, W] images; got shape {tuple(samples.shape)}")
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.repeat(1, 3, 1, 1)
    k, (_, _, h, w) = len(u8), u8.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(u8.numpy()):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            img.transpose(1, 2, 0)
    scale = max(1, math.ceil(min_side / max(grid.shape[:2])))
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def scatter_png(samples: torch.Tensor, modes: torch.Tensor | None = None, title: str = "",
                n: int = SCATTER_POINTS) -> bytes:
    """Generated 2-D points (the first ``n``) and the true mixture's modes as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = samples[:n].detach().cpu().double().numpy()
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    try:
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.35, color="tab:blue", label="samples")
        if modes is not None:
            m = np.asarray(modes, dtype=np.float64)
            ax.scatter(m[:, 0], m[:, 1], s=60, marker="x", color="tab:red", linewidths=2, label="true modes")
            lim = 1.5 * float(np.abs(m).max())
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
    finally:
        plt.close(fig)


def sample_picture(dataset, samples: torch.Tensor, title: str = "") -> bytes | None:
    """The cell's picture: a grid for images, a scatter over the modes for 2-D data, else None."""
    if len(samples) == 0:
        return None
    if getattr(dataset, "kind", "") == "image":
        return png_bytes(image_grid(samples))
    if tuple(samples.shape[1:]) == (2,):
        mixture = getattr(dataset, "data_mixture", None)
        return scatter_png(samples, getattr(mixture, "means", None), title)
    return None
