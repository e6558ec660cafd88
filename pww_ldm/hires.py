"""A1111's "Hires. fix": generate at a base size, upscale, then img2img at the target size.

Pass 1 is txt2img (or Paint-with-Words) at width x height. The upscale is either in latent space
("latent": bilinear, "latent-nearest": nearest-exact; A1111's "Latent" and "Latent
(nearest-exact)"), whose result is the second pass's init latent with no VAE round trip, or in
image space ("lanczos": decode, Lanczos-resize, encode). Pass 2 is img2img at
int(scale * size) rounded down to a multiple of 8, with the hires denoising strength, the same
seeds (fresh noise at the new size, as A1111) and, for Paint-with-Words, the colour map resampled
to the new size. The PNG text is A1111's: `Size` the base size, `Hires upscale`,
`Hires upscaler`, `Hires steps` when set, `Denoising strength` the hires strength.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .models.latent_diffusion import LatentDiffusion
from .pipeline import generate, paint_with_words, resolve_seed, resolve_size, sampling_options
from .user_errors import UsageError

UPSCALERS = {"latent": "Latent", "latent-nearest": "Latent (nearest-exact)", "lanczos": "Lanczos"}


def upscale_latents(latents: torch.Tensor, size_hw: tuple[int, int], upscaler: str) -> torch.Tensor:
    """(n, 4, h, w) -> (n, 4, *size_hw): bilinear ("latent") or nearest-exact ("latent-nearest"),
    as A1111's latent upscalers (torch interpolate, no antialiasing)."""
    if upscaler == "latent":
        return F.interpolate(latents, size=size_hw, mode="bilinear", align_corners=False)
    return F.interpolate(latents, size=size_hw, mode="nearest-exact")


def hires_fix(model: LatentDiffusion, prompt: str, *, hr_scale: float = 2.0,
              hr_denoise: float = 0.5, hr_upscaler: str = "latent", hr_steps: int | None = None,
              width: int | None = None, height: int | None = None,
              color_map_image: Image.Image | None = None, color_context: Any = None,
              **kwargs: Any) -> list[Image.Image]:
    """Generate at width x height, upscale by hr_scale, img2img at the target size (A1111).

    hr_upscaler: "latent", "latent-nearest" or "lanczos". hr_denoise: the second pass's strength
    in (0, 1]. hr_steps: its steps (default: the first pass's). color_map_image + color_context:
    Paint-with-Words in both passes (the map is resampled for each size). Other keywords as
    `generate` (sampler, steps, guidance_scale, seed, n_images, negative_prompt, ...). Returns
    the target-size PIL images with their parameters text.
    """
    if hr_upscaler not in UPSCALERS:
        raise ValueError(f"hr_upscaler {hr_upscaler!r}: use one of {', '.join(UPSCALERS)}")
    if not hr_scale > 1.0:
        raise ValueError(f"hr_scale must be above 1 (the target is hr_scale times the size), "
                         f"got {hr_scale}")
    if (color_map_image is None) != (color_context is None):
        raise ValueError("Paint-with-Words needs both color_map_image and color_context")
    width, height = resolve_size(width, height, color_map_image)
    target = (int(width * hr_scale) // 8 * 8, int(height * hr_scale) // 8 * 8)
    first = kwargs.pop("options", None) or sampling_options(kwargs, img2img=False)
    second = replace(first, strength=hr_denoise, steps=hr_steps or first.steps)
    seed, n = resolve_seed(kwargs.pop("seed", 0)), kwargs.pop("n_images", 1)  # one seed, both passes
    extra = {"Steps": first.steps, "Size": f"{width}x{height}", "Hires upscale": hr_scale,
             "Hires upscaler": UPSCALERS[hr_upscaler], "Hires steps": hr_steps,
             **(kwargs.pop("extra_parameters", None) or {})}

    def run(options: Any, size: tuple[int, int], **more: Any) -> Any:
        more = {"seed": seed, "n_images": n, **more}
        if color_map_image is None:
            return generate(model, prompt, options, width=size[0], height=size[1], **kwargs, **more)
        cmap = color_map_image.convert("RGB")  # one map, resampled for each pass: no resize warning
        cmap = cmap if cmap.size == size else cmap.resize(size, Image.NEAREST)
        return paint_with_words(model, prompt, cmap, color_context, options=options,
                                width=size[0], height=size[1], **kwargs, **more)

    if hr_upscaler == "lanczos":
        base = run(first, (width, height))
        upscaled = [image.resize(target, Image.LANCZOS) for image in base]
        # each image its own second pass (its own init image), with the seed it had in the batch
        return [run(second, target, init_image=upscaled[i], seed=seed + i, n_images=1,
                    extra_parameters=extra)[0] for i in range(n)]
    latents = run(first, (width, height), return_latents=True)
    init = upscale_latents(latents, (target[1] // 8, target[0] // 8), hr_upscaler)
    return run(second, target, init_latent=init, extra_parameters=extra)


def add_hires_flags(p: argparse.ArgumentParser) -> None:
    """The txt2img script's hires-fix flags (A1111's names and defaults)."""
    p.add_argument("--hr-scale", type=float, default=None,
                   help="hires fix: generate at --W x --H, upscale by this factor, then img2img "
                        "at the larger size (A1111's Hires. fix; default off)")
    p.add_argument("--hr-denoise", type=float, default=0.5,
                   help="denoising strength of the hires pass, in (0, 1] (default 0.5)")
    p.add_argument("--hr-upscaler", choices=list(UPSCALERS), default="latent",
                   help="latent (bilinear), latent-nearest (nearest-exact) or lanczos (image)")
    p.add_argument("--hr-steps", type=int, default=None,
                   help="steps of the hires pass (default: --steps)")


def hires_options(args: argparse.Namespace) -> dict[str, Any]:
    """The hires_fix keywords of parsed flags ({} without --hr-scale), checked: UsageError."""
    scale = getattr(args, "hr_scale", None)
    if scale is None:
        return {}
    if not scale > 1.0:
        raise UsageError(f"--hr-scale must be above 1, got {scale}")
    if not 0.0 < args.hr_denoise <= 1.0:
        raise UsageError(f"--hr-denoise must be in (0, 1], got {args.hr_denoise}")
    if args.hr_steps is not None and args.hr_steps < 1:
        raise UsageError(f"--hr-steps must be >= 1, got {args.hr_steps}")
    if getattr(args, "attention_maps", False):
        raise UsageError("--attention-maps is not available with --hr-scale")
    return dict(hr_scale=scale, hr_denoise=args.hr_denoise, hr_upscaler=args.hr_upscaler,
                hr_steps=args.hr_steps)
