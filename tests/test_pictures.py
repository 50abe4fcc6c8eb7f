"""Pictures of samples: the grid's layout pixel by pixel, and the scatter's geometry."""

from __future__ import annotations

import io

import numpy as np
import torch

from tiwbench.report.cell_picture import image_grid, png_bytes, scatter_image


def test_grid_places_each_image_with_gutters():
    x = torch.tensor([-1.0, 1.0, 0.0])[:, None, None, None].expand(3, 1, 2, 2)  # black, white, grey
    g = image_grid(x, pad=1, min_side=1)
    # 3 images: 2 a row, 2 rows; each 2×2 with 1-pixel white gutters -> 7 × 7
    assert g.shape == (7, 7, 3)
    assert (g[1:3, 1:3] == 0).all() and (g[1:3, 4:6] == 255).all() and (g[4:6, 1:3] == 128).all()
    assert (g[0] == 255).all() and (g[:, 3] == 255).all() and (g[4:6, 4:6] == 255).all()  # gutters, empty slot
    big = image_grid(x, pad=1, min_side=256)
    assert big.shape == (259, 259, 3) and (big[::37, ::37] == g).all()  # 37× nearest neighbour
    from PIL import Image

    with Image.open(io.BytesIO(png_bytes(big))) as im:
        assert np.array_equal(np.asarray(im), big)


def test_scatter_puts_points_and_modes_where_they_are():
    modes = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    img = scatter_image(torch.tensor([[0.0, 1.0]]), modes, side=101)  # lim = 1.5: 1 unit = 100/3 pixels
    assert tuple(img[50 - 33, 50]) == (31, 119, 180)  # (0, 1): up from the centre
    assert tuple(img[50, 50 + 33]) == (214, 39, 40) and tuple(img[50, 50 - 33]) == (214, 39, 40)
    assert tuple(img[5, 5]) == (255, 255, 255)
