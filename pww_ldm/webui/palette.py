"""The painted map as numbers: palette, quantisation, flood fill, colour shares (pure numpy).

The browser's brush anti-aliases its edges, so a painted map holds blends of two colours along
every stroke; Paint-with-Words matches colours exactly, so each pixel is snapped to the nearest
colour of the palette before anything else sees the map.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Clearly distinct colours; the first four are those of the bundled demo map (its background and
# its three shapes), so the demo scene needs no extra colour. Hex, as the brush and tables show.
PALETTE: tuple[str, ...] = (
    "#ffffff", "#dc1e1e", "#1e3cdc", "#f5d71e", "#1eb43c", "#961ec8", "#f08c1e", "#1ec8dc",
    "#f05ab4", "#8c5a28", "#808080", "#000000",
)
BACKGROUND = PALETTE[0]
MIN_UPLOAD_SHARE = 0.005  # a colour of an uploaded map covering >= 0.5 % of it joins the palette
MAX_UPLOAD_COLORS = 16


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#rrggbb' -> (r, g, b)."""
    text = color.strip().lstrip("#")
    if len(text) != 6:
        raise ValueError(f"colour {color!r}: expected '#rrggbb'")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def rgb_to_hex(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """(r, g, b) -> '#rrggbb'."""
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def palette_array(colors: tuple[str, ...] | list[str]) -> np.ndarray:
    """(K, 3) uint8 array of the hex colours, duplicates dropped, order kept."""
    unique = list(dict.fromkeys(c.lower() for c in colors))
    return np.array([hex_to_rgb(c) for c in unique], dtype=np.uint8)


def flatten(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (H, W, 3): alpha composited over the white background."""
    if rgba.ndim == 2:
        rgba = np.repeat(rgba[..., None], 3, axis=-1)
    if rgba.shape[-1] == 3:
        return rgba.astype(np.uint8)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def quantize(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8 where each pixel is its nearest palette colour.

    palette: (K, 3) uint8. Distance is squared Euclidean in RGB; ties go to the earlier colour.
    Works on the image's distinct colours only (a painted map has few), so it stays cheap at
    4096 x 4096.
    """
    flat = rgb.reshape(-1, 3)
    colors, inverse = np.unique(flat, axis=0, return_inverse=True)
    diff = colors[:, None, :].astype(np.int32) - palette[None, :, :].astype(np.int32)
    nearest = np.argmin((diff * diff).sum(-1), axis=1)
    return palette[nearest][inverse.reshape(-1)].reshape(rgb.shape)


def color_shares(rgb: np.ndarray) -> list[tuple[str, float]]:
    """[(hex, share of pixels in [0, 1])] of an (H, W, 3) map, most frequent first."""
    colors, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = float(counts.sum())
    return [(rgb_to_hex(colors[i]), float(counts[i] / total)) for i in order]


def upload_palette(rgb: np.ndarray) -> list[str]:
    """Colours of an uploaded (H, W, 3) map common enough to be meant, not edge blends."""
    return [c for c, share in color_shares(rgb)[:MAX_UPLOAD_COLORS] if share >= MIN_UPLOAD_SHARE]


def _spread_along_rows(area: np.ndarray, same: np.ndarray) -> np.ndarray:
    """(H, W) bool: every horizontal run of `same` that touches `area` becomes area."""
    h, w = same.shape
    starts = same & ~np.pad(same, ((0, 0), (1, 0)))[:, :w]
    run_id = np.cumsum(starts.ravel()).reshape(h, w) * same  # 0 off the seed colour
    touched = np.bincount(run_id[area & same], minlength=int(run_id.max()) + 1) > 0
    touched[0] = False
    return touched[run_id]


def flood_fill(rgb: np.ndarray, x: int, y: int, color: tuple[int, int, int]) -> np.ndarray:
    """Copy of the (H, W, 3) map with the 4-connected area of pixel (x, y)'s colour set to color.

    Alternates "fill every horizontal run the area touches" and the same for columns until the
    area stops growing: one iteration per turn of the area's shape, not per pixel, so it stays
    fast at 4096 x 4096.
    """
    h, w = rgb.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"fill point ({x}, {y}) is outside the {w}x{h} px map")
    same = (rgb == rgb[y, x]).all(axis=-1)
    area = np.zeros((h, w), dtype=bool)
    area[y, x] = True
    while True:
        grown = _spread_along_rows(area, same)
        grown = _spread_along_rows(grown.T, same.T).T
        if (grown == area).all():
            break
        area = grown
    out = rgb.copy()
    out[area] = color
    return out


def fit_map(image: Image.Image, width: int, height: int) -> np.ndarray:
    """A map image of any size and mode -> (height, width, 3) uint8, resized with nearest
    neighbour so no blended colour appears."""
    rgb = flatten(np.asarray(image.convert("RGBA")))
    if rgb.shape[:2] != (height, width):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.NEAREST))
    return rgb


def blank_map(width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 filled with the background colour."""
    return np.full((height, width, 3), hex_to_rgb(BACKGROUND), dtype=np.uint8)
