"""What the page's events do, without gradio: the app wires these to its components.

Maps travel as (H, W, 3) uint8 arrays; the editor's value is gradio's {"background", "layers",
"composite"} dict. Bad input raises ValueError subclasses with a message for the page.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import atomic_file
from ..region.tokens import Tokenizer
from . import palette, regions
from .pngmeta import MAX_PIXELS, read_png

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class UploadError(ValueError):
    """An uploaded file that is too large, not an image, or not readable."""


def editor_value(rgb: np.ndarray) -> dict[str, Any]:
    """The editor's value showing `rgb` as its background, with no strokes."""
    return {"background": rgb, "layers": [], "composite": rgb}


def painted_map(value: dict[str, Any] | None, width: int, height: int) -> np.ndarray:
    """The editor's composite (background + strokes) -> (height, width, 3) uint8, blank if none."""
    image = None if value is None else value.get("composite")
    if image is None and value is not None:
        image = value.get("background")
    if image is None:
        return palette.blank_map(width, height)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(palette.flatten(image.astype(np.uint8)))
    return palette.fit_map(image, width, height)


def active_palette(extra: list[str] | None) -> np.ndarray:
    """(K, 3) palette: the brush colours, then the colours an uploaded map brought."""
    return palette.palette_array(list(palette.PALETTE) + list(extra or []))


def quantized(value: dict[str, Any] | None, extra: list[str] | None, width: int,
              height: int) -> np.ndarray:
    """The painted map snapped to the palette: (height, width, 3) uint8."""
    return palette.quantize(painted_map(value, width, height), active_palette(extra))


def shares_of(qmap: np.ndarray | None) -> dict[str, float]:
    """{hex: share of pixels} of a map (empty for none)."""
    return {} if qmap is None else dict(palette.color_shares(np.asarray(qmap)[..., :3]))


def refresh(qmap: np.ndarray, rows: list[list] | None, prompt: str, tokenizer: Tokenizer
            ) -> tuple[list[list], str]:
    """(table rows for the map's colours, legend HTML) after the map changed."""
    shares = shares_of(qmap)
    table = regions.table_for_map(list(shares), rows)
    return table, regions.label_report(prompt, table, tokenizer, shares)


def open_upload(path: str | os.PathLike) -> Image.Image:
    """An uploaded image file, size- and pixel-checked before it is decoded."""
    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{path.name}: {path.stat().st_size / 2**20:.1f} MB; at most 20 MB")
    try:
        image = Image.open(path)
    except (OSError, Image.DecompressionBombError) as exc:
        raise UploadError(f"{path.name} is not an image this tool can read ({exc})") from None
    if image.width * image.height > MAX_PIXELS:
        raise UploadError(f"{path.name}: {image.width}x{image.height} px; at most 4096x4096 px")
    try:
        image.load()
    except (OSError, SyntaxError) as exc:
        raise UploadError(f"{path.name}: damaged image ({exc})") from None
    return image


def upload_map(path: str | os.PathLike, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """(map at width x height, its own colours to add to the palette) of an uploaded map file."""
    rgb = palette.fit_map(open_upload(path), width, height)
    return rgb, palette.upload_palette(rgb)


def fill(qmap: np.ndarray, x: int, y: int, color: str) -> np.ndarray:
    """Flood fill of the quantised map at pixel (x, y) with the palette colour `color`."""
    return palette.flood_fill(qmap, int(x), int(y), palette.hex_to_rgb(color))


def import_table(path: str | os.PathLike, rows: list[list]) -> list[list]:
    """The table with an uploaded JSON / YAML colour context applied to it."""
    path = Path(path)
    if path.stat().st_size > 1024 * 1024:
        raise regions.RegionTableError(f"{path.name}: larger than 1 MB; not a region file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise regions.RegionTableError(f"{path.name} is not a text file (JSON or YAML)") from None
    uploaded = regions.rows_from_regions(regions.loads(text))
    return regions.merge_uploaded(rows, uploaded)


def export_table(rows: list[list], fmt: str, folder: str | os.PathLike) -> Path:
    """The named rows as a regions.json / regions.yaml file in `folder` (for download), written
    atomically: two pages may write the same file at once."""
    text = regions.dumps(regions.records_from_rows(rows), fmt)
    path = Path(folder) / f"regions.{fmt}"
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def reopen(path: str | os.PathLike) -> dict[str, Any]:
    """Settings of a PNG this tool wrote (see pngmeta.read_png); map at its own size."""
    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{path.name}: larger than 20 MB")
    meta = read_png(path.read_bytes())
    if "regions" in meta and "map" in meta:
        listed = regions.rows_from_regions(regions.loads(json.dumps(meta["regions"])))
        meta["rows"] = regions.merge_uploaded(regions.table_for_map(list(shares_of(meta["map"])), None),
                                              listed)
    return meta
