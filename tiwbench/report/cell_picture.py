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


def scatter_image(samples: torch.Tensor, modes: torch.Tensor | None = None, n: int = SCATTER_POINTS,
                  side: int = 256) -> np.ndarray:
    """Generated 2-D points (the first ``n``, blue) over the true modes (red crosses), rasterised directly
    (a figure library would cost a second a cell): white ground, grey axes through 0; the square spans
    ±1.5 × the largest mode coordinate (or the points' range without modes)."""
    x = samples[:n].detach().cpu().double().numpy()
    m = None if modes is None else np.asarray(modes, dtype=np.float64)
    lim = 1.5 * float(np.abs(m).max()) if m is not None and m.size else float(np.abs(x).max() or 1.0) * 1.05
    img = np.full((side, side, 3), 255, dtype=np.uint8)

    def to_px(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        col = np.round((p[:, 0] + lim) / (2 * lim) * (side - 1)).astype(int)
        row = np.round((lim - p[:, 1]) / (2 * lim) * (side - 1)).astype(int)  # y up
        return row, col

    zero_r, zero_c = to_px(np.zeros((1, 2)))
    img[zero_r[0], :] = img[:, zero_c[0]] = 200
    r, c = to_px(x)
    inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
    img[r[inside], c[inside]] = (31, 119, 180)
    if m is not None:
        mr, mc = to_px(m)
        for d in range(-6, 7):  # an × of 13 pixels a stroke, 2 pixels thick
            for rr, cc in ((mr + d, mc + d), (mr + d, mc - d), (mr + d, mc + d + 1), (mr + d, mc - d + 1)):
                ok = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
                img[rr[ok], cc[ok]] = (214, 39, 40)
    return img


def sample_picture(dataset, samples: torch.Tensor) -> bytes | None:
    """The cell's picture: a grid for images, a scatter over the modes for 2-D data, else None."""
    if len(samples) == 0:
        return None
    if getattr(dataset, "kind", "") == "image":
        return png_bytes(image_grid(samples))
    if tuple(samples.shape[1:]) == (2,):
        mixture = getattr(dataset, "data_mixture", None)
        return png_bytes(scatter_image(samples, getattr(mixture, "means", None)))
    return None
