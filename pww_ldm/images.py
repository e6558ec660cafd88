"""Image conversion and atomic PNG writing with the SD web UIs' `parameters` text chunk."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .atomic import atomic_file


class ImageSizeError(ValueError):
    """A width or height that the model cannot generate."""


def check_size(width: int, height: int) -> None:
    """Sizes must be positive multiples of 8 px (the VAE's factor)."""
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise ImageSizeError(
            f"image size {width}x{height} px: width and height must be positive multiples of 8 "
            f"(e.g. {max(8, width // 8 * 8)}x{max(8, height // 8 * 8)})")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB PIL images."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def from_pil(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """A PIL image (any mode) resized to width x height (Lanczos) -> (1, 3, H, W) in [-1, 1]."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None,
             extra_text: Mapping[str, str] | None = None) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename).

    `parameters` goes into the `parameters` text chunk that A1111 / ComfyUI read back.
    extra_text: more {keyword: text} chunks, compressed (zTXt), e.g. the web UI's `pww` chunk.
    A crash mid-write leaves no partial file under `path`.
    """
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    text = parameters if parameters is not None else image.info.get("parameters")
    if text:
        info.add_text("parameters", text)
    for key, value in (extra_text or {}).items():
        info.add_text(key, value, zip=True)
    with atomic_file(path) as f:
        image.save(f, format="PNG", pnginfo=info)
    return path


def image_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile same-size images into one grid image (cols default: all in one row)."""
    cols = cols or len(images)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
