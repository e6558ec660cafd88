"""The page's values -> a checked `Request` (cheap checks only, before it queues).

`values` maps the generate event's input names (events.GEN_IN) to what gradio sent: numbers may
arrive as floats or None, images as file paths, the editors as {"background", "layers",
"composite"} dicts of (H, W, C) uint8 arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..approx import Approximations
from ..images import check_size
from ..masking import MaskError, prepare_mask
from . import handlers, regions
from .pngmeta import MAX_PIXELS
from .worker import MODES, Request


class InpaintInputError(ValueError):
    """An inpaint tab without an image or mask, or with a mask that does not fit the image."""


def whole(value: Any, name: str) -> int:
    """A whole number from a page field; ValueError naming the field otherwise."""
    if value is None or float(value) != int(float(value)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(float(value))


def off_or_positive(value: Any, name: str) -> float:
    """A feature's strength from a page field (empty = 0 = off); ValueError naming the field when
    it is negative or not a number (NaN fails `>= 0` too)."""
    number = float(value or 0.0)
    if not number >= 0:
        raise ValueError(f"{name} {number}: must be >= 0 (0 = off)")
    return number


def approximations(values: dict[str, Any]) -> Approximations:
    """The ToMe ratio, DeepCache interval and branch fields (empty = off, branch 1), checked as
    the scripts' --tome / --deepcache / --deepcache-branch: Approximations' own message."""
    interval, branch = values.get("deepcache"), values.get("deepcache_branch")
    interval = 0 if interval is None else whole(interval, "DeepCache interval")
    branch = 1 if branch is None else whole(branch, "DeepCache branch")
    try:
        return Approximations(tome=float(values.get("tome") or 0.0), deepcache=interval,
                              deepcache_branch=branch)
    except ValueError as exc:
        raise ValueError(f"{exc} (ToMe ratio / DeepCache interval / DeepCache branch)") from None


def _rgb(array: np.ndarray) -> Image.Image:
    """(H, W, 3 or 4) uint8 -> RGB image (alpha composited over white, as the maps)."""
    return Image.fromarray(handlers.palette.flatten(np.asarray(array).astype(np.uint8)))


def inpaint_image(editor: dict[str, Any] | None) -> Image.Image:
    """The image to repaint: the inpaint editor's background, pixel-checked."""
    background = None if editor is None else editor.get("background")
    if background is None:
        raise InpaintInputError("inpaint: upload the image to repaint in the inpaint tab")
    image = _rgb(background)
    if image.width * image.height > MAX_PIXELS:
        raise InpaintInputError(f"inpaint: the image is {image.width}x{image.height} px; at most "
                                "4096x4096 px")
    return image


def painted_mask(editor: dict[str, Any] | None, size: tuple[int, int]) -> Image.Image | None:
    """The strokes painted on the inpaint editor as an "L" mask of `size` (w, h), white = repaint:
    the strongest alpha over its layers (the brush colour does not matter). None when nothing is
    painted."""
    layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or []]
    alphas = [layer[..., 3] for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4]
    if not alphas or not any(a.any() for a in alphas):
        return None
    mask = Image.fromarray(np.max(np.stack(alphas), axis=0).astype(np.uint8), "L")
    return mask if mask.size == size else mask.resize(size, Image.NEAREST)


def inpaint_mask(editor: dict[str, Any] | None, mask_path: str | None, image: Image.Image,
                 invert: bool) -> Image.Image:
    """The repaint mask ("L", image's size): an uploaded mask file (white = repaint) if given,
    else the strokes painted on the image. InpaintInputError when there is none, it is empty, or
    the upload's size differs from the image's."""
    if mask_path:
        upload = handlers.open_upload(mask_path)
        if upload.size != image.size:
            raise InpaintInputError(
                f"inpaint: the mask is {upload.width}x{upload.height} px, the image "
                f"{image.width}x{image.height} px; upload a mask of the image's size (white = repaint)")
        mask = _rgb(np.asarray(upload.convert("RGBA"))).convert("L")
    else:
        mask = painted_mask(editor, image.size)
        if mask is None:
            raise InpaintInputError("inpaint: no mask; paint the area to repaint on the image in the "
                                    "inpaint tab, or upload a mask (white = repaint)")
    try:
        prepare_mask(mask, mask.size, 0, invert)  # the engine's own check: something to repaint
    except MaskError as exc:
        raise InpaintInputError(f"inpaint: {exc}") from None
    return mask


def _mode_inputs(values: dict[str, Any]) -> dict[str, Any]:
    """The Request fields of the chosen mode: init image, strength and the inpaint options."""
    mode = values.get("mode") or "txt2img"
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {list(MODES)}")
    if mode == "img2img":
        if not values.get("init_image"):
            raise ValueError("img2img: upload an init image in the img2img tab (or choose txt2img)")
        return dict(mode=mode, init_image=handlers.open_upload(values["init_image"]).convert("RGB"),
                    strength=float(values["strength"]))
    if mode == "txt2img":
        return dict(mode=mode)
    blur, padding = float(values["mask_blur"]), whole(values["only_masked_padding"], "masked padding")
    if blur < 0 or padding < 0:
        raise InpaintInputError("inpaint: mask blur and masked padding must be >= 0")
    image = inpaint_image(values["inpaint_editor"])
    invert = bool(values["invert_mask"])
    return dict(mode=mode, init_image=image, strength=float(values["inpaint_strength"]),
                mask=inpaint_mask(values["inpaint_editor"], values.get("mask_upload"), image, invert),
                mask_blur=blur, invert_mask=invert, only_masked=bool(values["only_masked"]),
                only_masked_padding=padding)


def build_request(values: dict[str, Any]) -> Request:
    """A Request from the generate event's values (by GEN_IN name), checked."""
    w, h = whole(values["width"], "width"), whole(values["height"], "height")
    check_size(w, h)
    batch = whole(values["batch_size"], "batch size")
    if not 1 <= batch <= 8:
        raise ValueError(f"batch size {batch}: choose 1 to 8")
    self_attention = off_or_positive(values.get("self_attention"), "self-attention")
    guidance = off_or_positive(values.get("attention_guidance"), "attention guidance")
    base = 1.0 if values.get("base_ratio") is None else float(values["base_ratio"])
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base ratio {base:g}: choose 0 to 1 (1 = unchanged)")
    approx = approximations(values)
    color_map = handlers.quantized(values["editor"], values["extra_colors"], w, h)
    records = regions.records_from_rows(values["table"] or [])
    present = handlers.shares_of(color_map)
    for record in records:
        if record["color"].lower() not in present:
            raise regions.RegionTableError(f"colour {record['color']} of region "
                                           f"{record.get('label') or record.get('prompt')!r} is not "
                                           f"in the colour map; the map's colours are {list(present)}")
    return Request(model=values["model"], prompt=values["prompt"] or "",
                   negative_prompt=values["negative_prompt"] or "", color_map=color_map,
                   regions=records, sampler=values["sampler"],
                   steps=whole(values["steps"], "steps"), cfg_scale=float(values["cfg_scale"]),
                   seed=whole(values["seed"], "seed"), width=w, height=h, batch_size=batch,
                   weight_function=values["weight_function"],
                   weight_scale=float(values["weight_scale"]), compare=bool(values["compare"]),
                   self_attention=self_attention, attention_guidance=guidance, base_ratio=base,
                   approx=approx, **_mode_inputs(values))
