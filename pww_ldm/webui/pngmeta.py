"""Reopening a PNG: the `pww` chunk (every setting, the region table, the map) written beside
A1111's `parameters`, and read back; a PNG with only `parameters` gives back what that holds.

`pww` chunk: JSON {"version": 1, "prompt", "negative_prompt", "settings": {...}, "regions":
[colour-context records], "map": base64 PNG of the quantised map}.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

from ..infotext import parse_parameters

CHUNK = "pww"
VERSION = 1
MAX_PIXELS = 4096 * 4096
# Settings the chunk carries (UI field names); Size is split into width / height.
SETTINGS = ("sampler", "steps", "cfg_scale", "seed", "width", "height", "batch_size",
            "weight_function", "weight_scale", "strength", "mode", "self_attention", "inpaint_strength",
            "mask_blur", "invert_mask", "only_masked", "only_masked_padding", "attention_guidance",
            "base_ratio", "tome", "deepcache", "deepcache_branch")
_FROM_PARAMETERS = {"Steps": ("steps", int), "Sampler": ("sampler", str),
                    "CFG scale": ("cfg_scale", float), "Seed": ("seed", int),
                    "PwW weight function": ("weight_function", str),
                    "PwW weight scale": ("weight_scale", float),
                    "Denoising strength": ("strength", float),
                    "PwW self-attention": ("self_attention", float), "Mask blur": ("mask_blur", float),
                    "Masked area padding": ("only_masked_padding", int),
                    "PwW guidance": ("attention_guidance", float),
                    "PwW base ratio": ("base_ratio", float),
                    # the engine's key, and A1111's for the same tomesd ratio
                    "ToMe": ("tome", float), "Token merging ratio": ("tome", float)}
# the engine's "DeepCache: 3 (branch 1)" (pww_ldm.approx.Approximations.parameters)
_DEEPCACHE = re.compile(r"(\d+) \(branch (\d+)\)")


class ReopenError(ValueError):
    """A file that is not a PNG this tool (or an SD web UI) wrote, or is too large."""


def map_to_base64(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 map -> base64 of a palette PNG (a painted map has few colours)."""
    colors, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colors) <= 256:  # exact: the palette is the map's own colours
        image = Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), "P")
        image.putpalette(colors.astype(np.uint8).tobytes())
    else:
        image = Image.fromarray(rgb)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def map_from_base64(text: str) -> np.ndarray:
    """Inverse of map_to_base64: (H, W, 3) uint8."""
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    _check_pixels(image)
    return np.asarray(image.convert("RGB"))


def pww_chunk(prompt: str, negative_prompt: str, settings: dict[str, Any],
              regions: list[dict[str, Any]], rgb: np.ndarray) -> str:
    """The `pww` chunk's JSON text."""
    return json.dumps({"version": VERSION, "prompt": prompt, "negative_prompt": negative_prompt,
                       "settings": {k: settings[k] for k in SETTINGS if k in settings},
                       "regions": regions, "map": map_to_base64(rgb)}, ensure_ascii=False)


def _check_pixels(image: Image.Image) -> None:
    if image.width * image.height > MAX_PIXELS:
        raise ReopenError(f"image of {image.width}x{image.height} px: at most 4096x4096 px are "
                          "accepted")


def _from_parameters(text: str) -> dict[str, Any]:
    params = parse_parameters(text)
    out: dict[str, Any] = {"prompt": params.get("Prompt", ""),
                           "negative_prompt": params.get("Negative prompt", ""), "settings": {}}
    for key, (name, kind) in _FROM_PARAMETERS.items():
        if key in params:
            try:
                out["settings"][name] = kind(params[key])
            except ValueError:
                pass  # a value another tool wrote its own way: leave that field as it is
    width, _, height = params.get("Size", "").partition("x")
    if width.isdigit() and height.isdigit():
        out["settings"].update(width=int(width), height=int(height))
    deepcache = _DEEPCACHE.fullmatch(params.get("DeepCache", ""))
    if deepcache:
        out["settings"].update(deepcache=int(deepcache[1]), deepcache_branch=int(deepcache[2]))
    if "PwW regions" in params:
        try:
            out["regions"] = json.loads(params["PwW regions"])
        except ValueError:
            pass
    return out


def read_png(data: bytes) -> dict[str, Any]:
    """Settings of a PNG's bytes: {"prompt", "negative_prompt", "settings", "regions"?, "map"?}.

    "map" is an (H, W, 3) uint8 array when the PNG has a `pww` chunk. Raises ReopenError for
    anything else than a PNG with a `pww` or `parameters` chunk.
    """
    try:
        image = Image.open(io.BytesIO(data))
        _check_pixels(image)
        image.load()  # text chunks after the image data are read only now
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ReopenError(f"not a readable image ({exc}); drop a PNG this tool wrote") from None
    if image.format != "PNG":
        raise ReopenError(f"a {image.format} image; drop a PNG this tool wrote")
    if CHUNK in image.info:
        try:
            meta = json.loads(image.info[CHUNK])
            meta["map"] = map_from_base64(meta["map"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ReopenError(f"the PNG's `pww` chunk is damaged ({exc})") from None
        return meta
    if "parameters" in image.info:
        return _from_parameters(image.info["parameters"])
    raise ReopenError("this PNG holds no generation settings (no `pww` or `parameters` text chunk)")
