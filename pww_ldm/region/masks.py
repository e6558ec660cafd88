"""Pixel masks from a colour map, their blur, and their resampling to attention grids.

Grid geometry (CompVis UNet): for an H x W px image the latent is (H/8, W/8) and each downsample
is a stride-2 conv with padding 1, so level k has ceil(H/8 / 2^k) rows. Cell i of level k covers
pixels [i*s, (i+1)*s) with s = 8 * 2^k; the last cell may extend past the image.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ColorMapError

RESAMPLE_MODES = ("area", "bilinear")


def to_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 array of a colour map, any PIL mode, at size (W, H).

    P/RGBA/L/LA/I/... are converted to RGB (alpha dropped, not composited, so painted colours stay
    exact). A map of another size is resized with NEAREST (no blended colours) and a warning.
    """
    if not isinstance(image, Image.Image):
        raise ColorMapError(f"colour map must be a PIL image, got {type(image).__name__}")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # Integer/float grey maps: clip to 0..255 explicitly (Pillow versions differ on I->RGB).
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != tuple(size):
        warnings.warn(
            f"colour map is {image.size[0]}x{image.size[1]} px but the output is "
            f"{size[0]}x{size[1]} px: resizing the map with nearest-neighbour",
            stacklevel=3,
        )
        image = image.resize(tuple(size), Image.NEAREST)
    return np.asarray(image, dtype=np.uint8)


def color_mask(rgb: np.ndarray, color: tuple[int, int, int]) -> torch.Tensor:
    """(H, W) float32 mask, 1 where the (H, W, 3) map has exactly `color`."""
    return torch.from_numpy((rgb == np.asarray(color, dtype=np.uint8)).all(axis=-1)).float()


def gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) mask blurred by a separable Gaussian of `sigma` px (kernel radius 3 sigma).

    Borders are replicated: a region touching the image edge continues past it, so its mask does
    not fade there.
    """
    if sigma <= 0:
        return mask
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = mask[None, None].float()
    out = F.pad(out, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[0, 0].clamp_(0, 1)


def grid_level(height: int, width: int, grid: tuple[int, int]) -> int:
    """The UNet level k whose grid for an height x width px image is `grid` (h, w)."""
    lat_h, lat_w = height // 8, width // 8
    for k in range(16):
        if (-(-lat_h // 2**k), -(-lat_w // 2**k)) == tuple(grid):
            return k
    raise ColorMapError(
        f"attention grid {grid} is not a UNet level of a {width}x{height} px image "
        f"(latent {lat_h}x{lat_w}, then ceil-halved at each level)"
    )


def area_matrix(n_pixels: int, n_cells: int, cell: int) -> torch.Tensor:
    """(n_cells, n_pixels): row i averages the in-image pixels [i*cell, (i+1)*cell)."""
    idx = torch.arange(n_pixels) // cell
    if int(idx[-1]) >= n_cells:
        raise ColorMapError(f"{n_cells} cells of {cell} px do not cover {n_pixels} px")
    a = torch.zeros(n_cells, n_pixels)
    a[idx, torch.arange(n_pixels)] = 1.0
    return a / a.sum(dim=1, keepdim=True).clamp_min(1.0)


def resample_mask(
    mask: torch.Tensor, grid: tuple[int, int], mode: str = "area", level: int | None = None
) -> torch.Tensor:
    """(..., H, W) pixel masks -> (..., h, w) values on an attention grid.

    "area": each cell gets the fraction of its in-image pixels the mask covers (exact, also when
    the last cell sticks out of the image); `level` (found from the grid when None) sets the cell
    size 8 * 2^level. "bilinear": the reference implementation's resampling,
    F.interpolate(mode="bilinear", align_corners=True) (it samples, so thin regions can vanish).
    """
    h, w = grid
    height, width = mask.shape[-2:]
    if mode == "bilinear":
        flat = mask.reshape(-1, 1, height, width).float()
        out = F.interpolate(flat, size=(h, w), mode="bilinear", align_corners=True)
        return out.reshape(*mask.shape[:-2], h, w)
    if mode != "area":
        raise ColorMapError(f"unknown mask resampling {mode!r}; valid: {list(RESAMPLE_MODES)}")
    k = grid_level(height, width, grid) if level is None else level
    cell = 8 * 2**k
    a_h = area_matrix(height, h, cell)
    a_w = area_matrix(width, w, cell)
    return a_h @ mask.float() @ a_w.T
