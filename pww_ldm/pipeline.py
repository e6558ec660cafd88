"""txt2img / img2img / paint_with_words: the one place that knows all the parts.

prompt -> text embeddings; colour map + context -> RegionContext; seeds -> noise; the sampler
runs the UNet with a UNetContext carrying sigma and the regions; the VAE decodes. Images come
back as PIL images whose `info["parameters"]` holds the settings in the SD web UIs' format.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image

from .checkpoint import ArchitectureMismatchError
from .images import check_size, from_pil, to_pil
from .models.latent_diffusion import LatentDiffusion
from .models.unet import Downsample
from .region import RegionContext
from .samplers.noise import initial_noise
from .samplers.registry import get_sampler
from .samplers.run import sample_latents
from .vae import decode_latents, encode_images

LATENT_FACTOR = 8  # SD's VAE downsamples by 8


def resolve_size(width: int | None, height: int | None, reference: Image.Image | None
                 ) -> tuple[int, int]:
    """Width and height to generate: the given ones, else the reference image's (colour map or
    init image) rounded down to a multiple of 8, else 512."""
    if width is None:
        width = reference.width // 8 * 8 if reference is not None else 512
    if height is None:
        height = reference.height // 8 * 8 if reference is not None else 512
    return width, height


def resolve_seed(seed: int | None) -> int:
    """None or -1 (A1111's "random") -> a fresh random seed; anything else unchanged."""
    return secrets.randbelow(2**32) if seed is None or seed == -1 else int(seed)


def attention_grids(model: LatentDiffusion, h: int, w: int) -> list[tuple[int, int]]:
    """The (h, w) grids of the UNet levels for an h x w latent: each level halves, rounding up
    (stride-2 convs with padding 1)."""
    unet = model.model.diffusion_model
    grids = [(h, w)]
    for _ in range(sum(isinstance(m, Downsample) for m in unet.modules())):
        h, w = (h + 1) // 2, (w + 1) // 2
        grids.append((h, w))
    return grids


def _parameters_text(prompt: str, negative_prompt: str, settings: Mapping[str, Any]) -> str:
    line = ", ".join(f"{k}: {v}" for k, v in settings.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


@torch.inference_mode()
def generate(model: LatentDiffusion, prompt: str, *, negative_prompt: str = "", steps: int = 30,
             guidance_scale: float = 7.5, seed: int | None = 0, sampler: str = "euler_a",
             width: int = 512, height: int = 512, n_images: int = 1,
             regions: RegionContext | None = None, init_image: Image.Image | None = None,
             strength: float = 0.5, eta: float | None = None, progress: bool = True,
             callback: Callable[[dict], None] | None = None,
             sampler_options: Mapping[str, Any] | None = None,
             extra_parameters: Mapping[str, Any] | None = None) -> list[Image.Image]:
    """Generate `n_images` images; the core of txt2img, img2img and paint_with_words.

    Image i uses seed + i (initial noise, ancestral noise, img2img encoding), so a batch equals
    single runs. regions: a RegionContext (inactive or None = plain Stable Diffusion). Returns
    width x height RGB PIL images with `info["parameters"]`.
    """
    check_size(width, height)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    factor = model.first_stage_model.downsample_factor
    if factor != LATENT_FACTOR:
        raise ArchitectureMismatchError(f"the model's VAE downsamples by {factor}; the pipeline "
                                        f"needs SD's factor {LATENT_FACTOR}")
    seed = resolve_seed(seed)
    seeds = [seed + i for i in range(n_images)]
    spec = get_sampler(sampler)
    device = model.device
    shape = (model.channels, height // LATENT_FACTOR, width // LATENT_FACTOR)
    cond = model.get_learned_conditioning([prompt])
    uncond = model.get_learned_conditioning([negative_prompt]) if guidance_scale != 1.0 else None
    active = regions if regions is not None and regions.is_active else None

    if active is not None:
        active.prepare(attention_grids(model, shape[1], shape[2]), device,
                       torch.promote_types(model.unet_dtype, torch.float32))
    noise = None
    if regions is not None and any(r.seed is not None for r in regions.regions):
        noise = regions.initial_noise(initial_noise(seeds, shape, device=device))

    init_latent = None
    if init_image is not None:
        pixels = from_pil(init_image, width, height).to(device).expand(n_images, -1, -1, -1)
        init_latent = encode_images(model, pixels, seeds)

    latents = sample_latents(
        model, sampler=sampler, steps=steps, cond=cond, uncond=uncond,
        guidance_scale=guidance_scale, shape=shape, seeds=seeds, regions=active,
        init_latent=init_latent, strength=strength if init_image is not None else None,
        initial_noise=noise, eta=eta, device=device, callback=callback,
        disable_progress=not progress, sampler_options=sampler_options)
    images = to_pil(decode_latents(model, latents))

    settings: dict[str, Any] = {"Steps": steps, "Sampler": spec.label, "CFG scale": guidance_scale,
                                "Seed": None, "Size": f"{width}x{height}"}
    if init_image is not None:
        settings["Denoising strength"] = strength
    if eta is not None:
        settings["Eta"] = eta
    settings.update(extra_parameters or {})
    for image, image_seed in zip(images, seeds):
        settings["Seed"] = image_seed
        image.info["parameters"] = _parameters_text(prompt, negative_prompt, settings)
    return images


def txt2img(model: LatentDiffusion, prompt: str, **kwargs: Any) -> list[Image.Image]:
    """Plain Stable Diffusion text-to-image; keywords as `generate` (no regions)."""
    kwargs.pop("regions", None)
    return generate(model, prompt, **kwargs)


def img2img(model: LatentDiffusion, prompt: str, init_image: Image.Image, strength: float = 0.5,
            **kwargs: Any) -> list[Image.Image]:
    """Image-to-image: `init_image` noised to `strength` then denoised; size defaults to the
    init image's, rounded down to a multiple of 8. Keywords as `generate`."""
    kwargs["width"], kwargs["height"] = resolve_size(kwargs.get("width"), kwargs.get("height"),
                                                     init_image)
    return generate(model, prompt, init_image=init_image, strength=strength, **kwargs)


def paint_with_words(model: LatentDiffusion, prompt: str, color_map_image: Image.Image | None,
                     color_context: Any, steps: int = 30, guidance_scale: float = 7.5,
                     seed: int | None = 0, sampler: str = "euler_a",
                     weight_function: str | Callable = "max", weight_scale: float | None = None,
                     negative_prompt: str = "", width: int | None = None,
                     height: int | None = None, n_images: int = 1,
                     init_image: Image.Image | None = None, strength: float = 0.5,
                     resample: str = "area", strict: bool = True,
                     **kwargs: Any) -> list[Image.Image]:
    """Paint-with-Words: the painted regions of `color_map_image` steer where their words go.

    color_context: {(r, g, b) or "#rrggbb": "label,weight[,seed[,blur]]"}, a list of region
    records, or a JSON/YAML file/string (see pww_ldm.region.parse). Size defaults to the map's
    size rounded down to a multiple of 8 (else 512x512). img2img when `init_image` is given.
    Other keywords as `generate`. Returns n_images PIL images.
    """
    width, height = resolve_size(width, height, color_map_image or init_image)
    check_size(width, height)
    regions = RegionContext.build(prompt, color_map_image, color_context, width=width,
                                  height=height, tokenizer=model.cond_stage_model.tokenizer,
                                  weight_function=weight_function, weight_scale=weight_scale,
                                  resample=resample, strict=strict)
    described = [{"color": "#{:02x}{:02x}{:02x}".format(*r.color), "label": r.label, "weight": r.weight,
                  **({"seed": r.seed} if r.seed is not None else {}),
                  **({"blur": r.blur} if r.blur else {})} for r in regions.regions]
    fn_name = weight_function if isinstance(weight_function, str) else "custom"
    extra = {"PwW weight function": fn_name, "PwW weight scale": weight_scale,
             "PwW regions": json.dumps(described)}
    extra.update(kwargs.pop("extra_parameters", None) or {})
    return generate(model, prompt, negative_prompt=negative_prompt, steps=steps,
                    guidance_scale=guidance_scale, seed=seed, sampler=sampler, width=width,
                    height=height, n_images=n_images, regions=regions, init_image=init_image,
                    strength=strength, extra_parameters=extra, **kwargs)
