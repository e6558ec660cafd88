"""Inpainting masks, as the AUTOMATIC1111 web UI handles them (modules/masking.py, processing.py).

White (255) = repaint, black = keep. The mask is blurred (Gaussian, `mask_blur` px), and the
blurred mask does three things: rounded at latent size it chooses what the sampler keeps
(`keep_mask`, A1111's `latmask`), rounded at image size it is the inpainting model's mask
channel, and unrounded it feathers the final paste over the original (`composite`), so pixels
where it is 0 are the original's exactly. "Only masked" crops the mask's bounding box (padded, grown
to the output's aspect ratio) and inpaints it at full resolution (`crop_region`).

This module imports nothing of the pipeline: the pipeline calls `sampler_inputs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps


class MaskError(ValueError):
    """An inpainting mask that cannot be used (empty, wrong size, given without an image)."""


def prepare_mask(mask_image: Image.Image, size: tuple[int, int], blur: float = 4.0,
                 invert: bool = False) -> Image.Image:
    """The mask as an "L" image of `size` (w, h), inverted if asked, Gaussian-blurred by `blur` px.

    Resized with nearest neighbours first (a hand-painted mask keeps its edges), then blurred.
    Raises MaskError for a mask with nothing to repaint.
    """
    mask = mask_image.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if mask.size != tuple(size):
        mask = mask.resize(size, Image.NEAREST)
    if mask.getextrema()[1] == 0:
        raise MaskError("the inpainting mask is black everywhere: paint the area to repaint white "
                        "(or pass invert_mask=True / --invert-mask for a black-on-white mask)")
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """An "L" mask image -> (1, 1, H, W) float32 in [0, 1] (1 = repaint)."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """A1111's "only masked" box (x0, y0, x1, y1): the mask's bounding box, `padding` px added,
    grown to the aspect ratio width:height of the generation, kept inside the image."""
    box = mask.getbbox()
    if box is None:
        raise MaskError("the inpainting mask is black everywhere: nothing to repaint")
    img_w, img_h = mask.size
    x0, y0 = max(box[0] - padding, 0), max(box[1] - padding, 0)
    x1, y1 = min(box[2] + padding, img_w), min(box[3] + padding, img_h)
    ratio, box_w, box_h = width / height, x1 - x0, y1 - y0
    if box_w / box_h < ratio:  # too tall: widen
        x0, x1 = _grow(x0, x1, round(box_h * ratio), img_w)
    else:  # too wide: heighten
        y0, y1 = _grow(y0, y1, round(box_w / ratio), img_h)
    return x0, y0, x1, y1


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """[lo, hi) widened about its centre to `length` (at most `limit`), shifted to fit [0, limit)."""
    length = min(length, limit)
    lo = max(0, min(lo - (length - (hi - lo)) // 2, limit - length))
    return lo, lo + length


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """generated where the (blurred) mask is white, original where it is black, blended between:
    A1111's overlay of the original over the result. Exactly the original where mask == 0."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask)


def keep_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) repaint mask in [0, 1] -> (1, 1, h, w) {0, 1}: 1 where the latent is kept
    (A1111: the mask resized to the latent grid, rounded; `mask = 1 - latmask`)."""
    small = F.interpolate(mask.float(), size=latent_hw, mode="bilinear", antialias=True,
                          align_corners=False)
    return 1.0 - small.round()


def sampler_inputs(model: Any, mask: torch.Tensor | None, pixels: torch.Tensor | None,
                   init_latent: torch.Tensor | None, image_hw: tuple[int, int]) -> dict[str, Any]:
    """The CFGEpsModel keywords of an inpainting run (see pww_ldm.samplers.denoiser).

    mask (1, 1, H, W) in [0, 1] (1 = repaint) or None; pixels (n, 3, H, W) in [-1, 1] and
    init_latent (n, 4, h, w), the encoded init image, or None for txt2img. With a mask:
    keep_latent / keep_mask (A1111's blend, any model). An inpainting model (conditioning_key
    "hybrid") also gets c_concat: the rounded mask and masked image; without a mask it is told to
    repaint everything (mask 1, grey image), as A1111 runs such a model for txt2img / img2img.
    """
    hybrid = getattr(model.model, "conditioning_key", None) == "hybrid"
    if mask is not None and init_latent is None:
        raise MaskError("a mask needs the image it masks: pass init_image too (inpainting)")
    out: dict[str, Any] = {}
    if mask is not None:
        if tuple(mask.shape[-2:]) != tuple(image_hw):
            raise MaskError(f"the mask is {tuple(mask.shape[-2:])} px, the image {tuple(image_hw)}")
        out["keep_latent"] = init_latent
        out["keep_mask"] = keep_mask(mask, tuple(init_latent.shape[-2:]))
    if hybrid:
        device = model.device
        full = torch.ones(1, 1, *image_hw, device=device)
        m = full if mask is None else mask.to(device).round()
        image = torch.zeros(1, 3, *image_hw, device=device) if pixels is None else pixels[:1]
        out["c_concat"] = model.inpaint_conditioning(image.to(device), m)
    return out
