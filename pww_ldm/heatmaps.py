"""Attention heatmaps as pictures: one overlay per label with its painted region's outline, and
a grid "colour map | image | one heatmap per label" (the README's picture).

Maps come from `paint_with_words(..., return_attention=True)` ((n, H/8, W/8) per label); each is
upsampled bilinearly to the image, scaled to its own maximum and coloured with a small
perceptual ramp (black - purple - orange - yellow, as matplotlib's "inferno"), then blended over
the image. No plotting library is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .images import save_png
from .region.adherence import THRESHOLD, adherence

# Anchor colours of the ramp at 0, 1/4, 1/2, 3/4, 1 (sampled from matplotlib's inferno).
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                 np.float32)
TITLE_PX = 14  # height of the grid's title row


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of the ramp."""
    x = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(x).astype(int), len(_RAMP) - 2)
    frac = (x - low)[..., None]
    return np.round(_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of `mask` with a 4-neighbour outside it (its 1-px border)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~interior


def overlay(image: Image.Image, attention: torch.Tensor, mask: np.ndarray | None = None,
            alpha: float = 0.6) -> Image.Image:
    """The image with an (h, w) attention map blended over it (alpha of the heatmap) and, when
    given, the painted region's (H, W) mask outlined in white."""
    width, height = image.size
    up = F.interpolate(attention.float()[None, None], size=(height, width), mode="bilinear",
                       align_corners=False)[0, 0].clamp_min(0).numpy()
    peak = float(up.max())
    heat = colorize(up / peak if peak > 0 else up)
    base = np.asarray(image.convert("RGB"), np.float32)
    out = np.round(base * (1 - alpha) + heat * alpha).astype(np.uint8)
    if mask is not None:
        out[outline(np.asarray(mask) >= 0.5)] = 255
    return Image.fromarray(out)


def attention_grid(image: Image.Image, maps: Mapping[str, torch.Tensor],
                   masks: Mapping[str, np.ndarray] | None = None,
                   color_map: Image.Image | None = None, row: int = 0) -> Image.Image:
    """[colour map |] image | one overlay per label, each titled; maps: label -> (n, h, w)."""
    masks = masks or {}
    panels = ([("colour map", color_map.convert("RGB").resize(image.size, Image.NEAREST))]
              if color_map is not None else [])
    panels.append(("image", image.convert("RGB")))
    panels += [(label, overlay(image, m[row], masks.get(label))) for label, m in maps.items()]
    width, height = image.size
    grid = Image.new("RGB", (width * len(panels), height + TITLE_PX), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (title, panel) in enumerate(panels):
        grid.paste(panel, (k * width, TITLE_PX))
        draw.text((k * width + 2, 1), title[: max(4, width // 6)], fill=(0, 0, 0))
    return grid


def write_attention_maps(out_dir: str | Path, stem: str, image: Image.Image,
                         maps: Mapping[str, torch.Tensor], masks: Mapping[str, np.ndarray],
                         color_map: Image.Image | None = None, row: int = 0) -> list[Path]:
    """Write <stem>-attn-<k>.png per label (overlay with outline) and <stem>-attn-grid.png,
    atomically; returns the paths written (labels go into each PNG's "label" text chunk)."""
    out_dir = Path(out_dir)
    written = []
    for k, (label, m) in enumerate(maps.items()):
        picture = overlay(image, m[row], masks.get(label))
        written.append(save_png(picture, out_dir / f"{stem}-attn-{k}.png", "",
                                extra_text={"label": label}))
    grid = attention_grid(image, maps, masks, color_map, row)
    written.append(save_png(grid, out_dir / f"{stem}-attn-grid.png", ""))
    return written


def label_masks(color_map: Image.Image, regions: list, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """label (or "prompt: <text>" for a region's own prompt) -> (H, W) bool painted mask, cut
    from the colour map at size (W, H); masks of a label painted in two colours are joined."""
    rgb = np.asarray(color_map.convert("RGB").resize(size, Image.NEAREST))
    out: dict[str, np.ndarray] = {}
    for region in regions:
        mask = (rgb == np.asarray(region.color, np.uint8)).all(-1)
        names = ([region.label] if region.label else []) + (
            [f"prompt: {region.prompt}"] if region.prompt else [])
        for name in names:
            out[name] = out[name] | mask if name in out else mask
    return out


def attention_report(images: list[Image.Image], maps: Mapping[str, torch.Tensor],
                     color_map: Image.Image, regions: list, out_dir: str | Path, first: int
                     ) -> tuple[list[Path], list[str]]:
    """For image k of a batch (numbered first + k): its heatmap PNGs and grid, and one line per
    label with the attention adherence score (share of attention mass inside the region and IoU
    of the map thresholded at 0.4 of its maximum). Returns (paths written, lines)."""
    masks = label_masks(color_map, regions, images[0].size)
    paths, lines = [], []
    for k, image in enumerate(images):
        stem = f"{first + k:05}"
        paths += write_attention_maps(out_dir, stem, image, maps, masks, color_map, row=k)
        for label, m in maps.items():
            if label in masks:
                s = adherence(m[k], torch.from_numpy(masks[label]).float())
                lines.append(f"{stem} attention of {label!r}: {s['mass_inside']:.0%} of its mass "
                             f"inside its region, IoU {s['iou']:.2f} (map >= {THRESHOLD:g} x max)")
    return paths, lines
