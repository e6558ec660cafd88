"""`inpaint`: repaint the white part of a mask, with or without Paint-with-Words, as A1111 does.

Works with every model: an inpainting checkpoint (9-channel UNet) gets the mask and the masked
image as extra input channels, and every model keeps the known latent outside the mask at each
step (A1111's blend; pww_ldm.masking). The result is pasted over the original through the blurred
mask, so pixels where the blurred mask is 0 are the original's exactly. `only_masked` inpaints the
mask's padded bounding box at the full generation size and pastes it back (A1111's "Inpaint area:
Only masked"). Paint-with-Words regions (a colour map over the whole image) steer inside the
repainted area; with only_masked the map is cropped with the image.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from .masking import MaskError, composite, crop_region, mask_tensor, prepare_mask
from .models.latent_diffusion import LatentDiffusion
from .pipeline import generate, paint_with_words, resolve_size


def _regions_map(color_map_image: Image.Image | None, original: Image.Image,
                 box: tuple[int, int, int, int] | None, size: tuple[int, int]) -> Image.Image | None:
    """The colour map over the work area: stretched to the image, cropped like it, at `size`."""
    if color_map_image is None:
        return None
    cmap = color_map_image.convert("RGB")
    if box is not None:
        cmap = cmap.resize(original.size, Image.NEAREST).crop(box)
    return cmap.resize(size, Image.NEAREST) if cmap.size != size else cmap


def inpaint(model: LatentDiffusion, prompt: str, init_image: Image.Image, mask_image: Image.Image,
            *, mask_blur: float = 4.0, invert_mask: bool = False, only_masked: bool = False,
            only_masked_padding: int = 32, strength: float = 0.75, width: int | None = None,
            height: int | None = None, color_map_image: Image.Image | None = None,
            color_context: Any = None, **kwargs: Any) -> list[Image.Image]:
    """Repaint the white area of `mask_image` in `init_image` (A1111's img2img inpaint).

    mask_blur: Gaussian blur of the mask in px (A1111's "Mask blur", default 4). invert_mask:
    repaint the black area instead. only_masked: generate only the mask's bounding box plus
    `only_masked_padding` px, at width x height, then paste it back; the output keeps the init
    image's size. Otherwise the output is width x height (default: the init image's size rounded
    down to a multiple of 8). strength: A1111's denoising strength (inpainting models usually
    take 1.0). color_map_image + color_context: Paint-with-Words regions (as paint_with_words),
    the map covering the whole init image. Other keywords as `generate` / `paint_with_words`
    (prompt settings, sampler, steps, seed, n_images, ...). Returns PIL images whose
    `info["parameters"]` add A1111's "Mask blur" (and "Inpaint area", "Masked area padding").
    """
    if init_image is None or mask_image is None:
        raise MaskError("inpainting needs both init_image and mask_image (white = repaint)")
    if (color_map_image is None) != (color_context is None):
        raise ValueError("Paint-with-Words inpainting needs both color_map_image and color_context")
    original = init_image.convert("RGB")
    width, height = resolve_size(width, height, original)
    box = None
    if only_masked:
        blurred = prepare_mask(mask_image, original.size, mask_blur, invert_mask)
        box = crop_region(blurred, only_masked_padding, width, height)
        work_image = original.crop(box).resize((width, height), Image.LANCZOS)
        work_mask = blurred.crop(box).resize((width, height), Image.BILINEAR)
        base = original
    else:
        base = original if original.size == (width, height) else original.resize(
            (width, height), Image.LANCZOS)
        blurred = work_mask = prepare_mask(mask_image, (width, height), mask_blur, invert_mask)
        work_image = base
    extra = {"Mask blur": mask_blur, "Inpaint area": "Only masked" if only_masked else None,
             "Masked area padding": only_masked_padding if only_masked else None,
             **(kwargs.pop("extra_parameters", None) or {})}
    common = dict(init_image=work_image, mask=mask_tensor(work_mask), strength=strength,
                  width=width, height=height, extra_parameters=extra, **kwargs)
    cmap = _regions_map(color_map_image, original, box, (width, height))
    if cmap is not None:
        images = paint_with_words(model, prompt, cmap, color_context, **common)
    else:
        images = generate(model, prompt, **common)
    return [_paste_back(image, base, blurred, box) for image in images]


def _paste_back(image: Image.Image, base: Image.Image, blurred: Image.Image,
                box: tuple[int, int, int, int] | None) -> Image.Image:
    """The generated work area over `base` (resized into `box` when only_masked), then the
    original through the blurred mask; the parameters text carried over."""
    full = image
    if box is not None:
        full = base.copy()
        full.paste(image.resize((box[2] - box[0], box[3] - box[1]), Image.LANCZOS), box[:2])
    out = composite(full, base, blurred)
    out.info["parameters"] = image.info.get("parameters", "")
    return out
