"""txt2img / img2img / paint_with_words: the one place that knows all the parts.

prompt -> text embeddings; colour map + context -> RegionContext -> the Paint-with-Words
attention plug-in; seeds -> noise (drawn once, per-region seeds blended in); the sampler runs the
UNet with a UNetContext carrying sigma and the plug-ins; the VAE decodes. Images come back as PIL
images whose `info["parameters"]` holds the settings in the SD web UIs' format. The pipeline asks
the other parts (the UNet for its attention grids, the RegionContext for its metadata) instead
of reaching into them.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from .approx import Approximations
from .checkpoint import ArchitectureMismatchError
from .conditioning import AttentionPlugin
from .fast import is_fast, refreeze
from .images import check_size, from_pil, to_pil
from .infotext import format_parameters, model_settings
from .lora import LoraManager, extract_lora_tags
from .masking import sampler_inputs
from .models.latent_diffusion import LatentDiffusion
from .models.text_encoder import pad_to_same_length
from .region import PaintWithWords, RegionContext, parse_color_context
from .region.features import FeatureOptions, build_features, feature_parameters, split_regions
from .samplers.options import SAMPLING_FIELDS, SamplingOptions
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


def sampling_options(kwargs: dict[str, Any], img2img: bool) -> SamplingOptions:
    """Pop the sampling keywords (sampler, steps, guidance_scale, eta, strength, sampler_options)
    out of `kwargs` into one checked SamplingOptions; strength only counts for img2img."""
    given = {k: kwargs.pop(k) for k in SAMPLING_FIELDS if k in kwargs}
    strength = given.pop("strength", None)
    if img2img:
        given["strength"] = 0.5 if strength is None else strength
    return SamplingOptions(**given)


def _check_model(model: LatentDiffusion, n_images: int) -> None:
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    factor = model.first_stage_model.downsample_factor
    if factor != LATENT_FACTOR:
        raise ArchitectureMismatchError(f"the model's VAE downsamples by {factor}; the pipeline "
                                        f"needs SD's factor {LATENT_FACTOR}")


def _check_approx(model: LatentDiffusion, approx: Approximations | None) -> None:
    if approx is not None and approx.active and (
            is_fast(model) or getattr(model.model.diffusion_model, "_compiled_call_impl", None)):
        raise ValueError("the approximations (ToMe, DeepCache) need the eager UNet: load the "
                         "model without fast=True / compile=True (--fast / --compile)")


def _init_latent(model: LatentDiffusion, init_image: Image.Image | None,
                 init_latent: torch.Tensor | None, width: int, height: int, seeds: list[int]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(pixels (n, 3, H, W), init latent (n, 4, H/8, W/8)) of an img2img run, None for txt2img:
    init_image encoded with each image's seed, or a given latent repeated for the n seeds."""
    n = len(seeds)
    if init_image is not None:
        pixels = from_pil(init_image, width, height).to(model.device).expand(n, -1, -1, -1)
        return pixels, encode_images(model, pixels, seeds)
    if init_latent is not None:
        return None, init_latent.to(model.device, torch.float32).expand(n, -1, -1, -1)
    return None, None


def _plugins(model: LatentDiffusion, regions: RegionContext | None, latent_hw: tuple[int, int],
             n_tokens: int, extra: Sequence[AttentionPlugin]) -> list[AttentionPlugin]:
    """Paint-with-Words first (when it biases anything), then the caller's plug-ins."""
    plugins = list(extra)
    if regions is not None and regions.is_active:
        grids = model.attention_grids(*latent_hw)
        regions.prepare(grids, model.device, torch.promote_types(model.unet_dtype, torch.float32),
                        n_tokens)
        plugins.insert(0, PaintWithWords(regions))
    return plugins


def _settings(model: LatentDiffusion, options: SamplingOptions, width: int, height: int,
              img2img: bool, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """A1111's settings line, in its key order: Steps, Sampler, CFG scale, Seed, Size, Model..."""
    settings: dict[str, Any] = {"Steps": options.steps, "Sampler": options.spec.label,
                                "CFG scale": options.guidance_scale, "Seed": None,
                                "Size": f"{width}x{height}", **model_settings(model)}
    if img2img:
        settings["Denoising strength"] = options.strength
    if options.eta is not None:
        settings["Eta"] = options.eta
    clip_skip = getattr(model, "clip_skip", 1)
    # A1111 writes it only when it is not the model's own layer: SD 1.x's last (1); SD 2.x's
    # configs already take the penultimate layer (2), which A1111 does not write either.
    native = getattr(getattr(model, "cond_stage_model", None), "native_clip_skip", 1)
    if isinstance(clip_skip, int) and clip_skip != native:
        settings["Clip skip"] = clip_skip
    settings.update(extra or {})
    return settings


def lora_manager(model: LatentDiffusion) -> LoraManager:
    """The model's LoraManager (made on first use, `<lora:name>` from models/Lora): it keeps the
    merged LoRAs equal to what the current prompt's tags ask. Set `model.lora_manager` to a
    LoraManager of your own for another folder or fixed LoRAs."""
    manager = getattr(model, "lora_manager", None)
    if manager is None:
        manager = LoraManager(model)
        model.lora_manager = manager
    return manager


def _conditioning(model: LatentDiffusion, prompt: str, negative_prompt: str, guided: bool,
                  extra_chunks: tuple[torch.Tensor, torch.Tensor] | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """cond (1, 77*k, C) of the prompt (LoRA tags already out) and uncond of the negative prompt
    (None without guidance), extra chunks appended, padded to the same number of chunks."""
    cond = model.get_learned_conditioning([prompt])
    uncond = model.get_learned_conditioning([negative_prompt]) if guided else None
    if extra_chunks is not None:  # appended after the prompt's chunks: the prompt's columns stay
        cond = torch.cat([cond, extra_chunks[0].to(cond)], dim=1)
        uncond = None if uncond is None else torch.cat([uncond, extra_chunks[1].to(uncond)], dim=1)
    if uncond is not None:  # A1111: the shorter side gets the empty prompt's chunks at its end
        cond, uncond = pad_to_same_length(model, cond, uncond)
    return cond, uncond


def _options(options: SamplingOptions | None, sampling: dict[str, Any], img2img: bool
             ) -> SamplingOptions:
    """The SamplingOptions given, or those of the sampling keywords (not both)."""
    if options is None:
        return sampling_options(sampling, img2img=img2img)
    if sampling:
        raise TypeError(f"give the sampling settings in `options` or as keywords, not both: "
                        f"{sorted(sampling)}")
    return options


def _apply_loras(model: LatentDiffusion, prompt: str) -> tuple[str, LoraManager]:
    """Merge the prompt's <lora:...> tags into the model; (the text without them, the manager)."""
    loras = lora_manager(model)
    merged = loras.applied
    text = loras.apply_prompt(prompt)
    if is_fast(model) and loras.applied != merged:
        refreeze(model)  # the compiled UNet holds the old weights as constants
    return text, loras


def _inference(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn` without autograd: inference mode, or plain no_grad when a `guide` is given
    (attention guidance differentiates the UNet, and inference tensors cannot enter autograd)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(kwargs.get("guide") is None), torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


@_inference
def generate(model: LatentDiffusion, prompt: str, options: SamplingOptions | None = None, *,
             negative_prompt: str = "", seed: int | None = 0, width: int = 512, height: int = 512,
             n_images: int = 1, regions: RegionContext | None = None,
             plugins: Sequence[AttentionPlugin] = (), init_image: Image.Image | None = None,
             progress: bool = True, callback: Callable[[dict], None] | None = None,
             extra_parameters: Mapping[str, Any] | None = None,
             extra_chunks: tuple[torch.Tensor, torch.Tensor] | None = None,
             mask: torch.Tensor | None = None, init_latent: torch.Tensor | None = None,
             return_latents: bool = False, guide: Any = None,
             approx: Approximations | None = None, **sampling: Any) -> Any:
    """Generate `n_images` images; the core of txt2img, img2img and paint_with_words.

    options: the SamplingOptions; or leave it None and give its fields as keywords (sampler=,
    steps=, guidance_scale=, eta=, strength=, sampler_options=). Image i uses seed + i (initial
    noise, ancestral noise, img2img encoding), so a batch equals single runs. regions: a
    RegionContext (inactive or None = plain Stable Diffusion); plugins: further attention
    plug-ins. extra_chunks: (cond (1, 77*r, C), uncond (1, 77*r, C)) appended to the token axis
    of the conditioning (the per-region prompts; their plug-ins mask them). mask (1, 1, H, W) in
    [0, 1], 1 = repaint, with init_image: inpainting (pww_ldm.masking.sampler_inputs; use
    pww_ldm.inpaint for blur, crop and paste-back). init_latent (1 or n, 4, H/8, W/8): img2img
    from a diffusion latent instead of init_image (the hires fix's upscaled latent). guide: latent
    guidance for the sampler (region attention guidance, see pww_ldm.region.guidance). approx:
    the optional approximations of the UNet (pww_ldm.approx.Approximations: ToMe token merging,
    DeepCache feature caching; None = exact), named in the images' parameters. Returns width
    x height RGB PIL images with `info["parameters"]`, or with return_latents the sampled
    latents (n, 4, H/8, W/8).
    """
    img2img = init_image is not None or init_latent is not None
    options = _options(options, sampling, img2img)
    check_size(width, height)
    _check_model(model, n_images)
    _check_approx(model, approx)
    seeds = [resolve_seed(seed) + i for i in range(n_images)]
    shape = (model.channels, height // LATENT_FACTOR, width // LATENT_FACTOR)
    text, loras = _apply_loras(model, prompt)
    cond, uncond = _conditioning(model, text, negative_prompt, options.guidance_scale != 1.0,
                                 extra_chunks)
    active = _plugins(model, regions, shape[1:], cond.shape[1], plugins)
    seeded = regions is not None and any(r.seed is not None for r in regions.regions)

    pixels, init_latent = _init_latent(model, init_image, init_latent, width, height, seeds)
    latents = sample_latents(
        model, options, cond=cond, uncond=uncond, shape=shape, seeds=seeds, plugins=active,
        init_latent=init_latent, noise_transform=regions.initial_noise if seeded else None,
        device=model.device, callback=callback, disable_progress=not progress,
        model_kwargs=sampler_inputs(model, mask, pixels, init_latent, (height, width)), guide=guide,
        approx=approx)
    if return_latents:
        return latents
    images = to_pil(decode_latents(model, latents))

    settings = _settings(model, options, width, height, img2img, extra_parameters)
    settings.setdefault("Lora hashes", loras.hashes_text())
    settings.update(approx.parameters() if approx is not None else {})
    for image, image_seed in zip(images, seeds):
        settings["Seed"] = image_seed
        image.info["parameters"] = format_parameters(prompt, negative_prompt, settings)
    return images


def txt2img(model: LatentDiffusion, prompt: str, **kwargs: Any) -> list[Image.Image]:
    """Plain Stable Diffusion text-to-image; keywords as `generate`, without regions."""
    if kwargs.get("regions") is not None:
        raise ValueError("txt2img is plain Stable Diffusion and takes no regions: call "
                         "paint_with_words(model, prompt, color_map_image, color_context, ...)")
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
                     color_context: Any, weight_function: str | Callable = "max",
                     weight_scale: float | None = None, width: int | None = None,
                     height: int | None = None, init_image: Image.Image | None = None,
                     resample: str = "area", strict: bool = True, return_attention: bool = False,
                     features: FeatureOptions | None = None, **kwargs: Any) -> Any:
    """Paint-with-Words: the painted regions of `color_map_image` steer where their words go.

    color_context: {(r, g, b) or "#rrggbb": "label,weight[,seed[,blur]]"}, a list of region
    records, or a JSON/YAML file/string (see pww_ldm.region.parse). Size defaults to the map's
    size rounded down to a multiple of 8 (else 512x512). img2img when `init_image` is given.
    Sampling keywords (steps=30, guidance_scale=7.5, sampler="euler_a", seed=0, strength=0.5, ...)
    and the others as `generate`. features: the optional region features (FeatureOptions:
    DenseDiffusion self-/cross-attention modulation, attention maps); regions with their own
    "prompt" are handled whatever the options. mask_image= with init_image: inpainting (white =
    repaint; blur, only-masked and the rest as pww_ldm.inpaint). Returns n_images PIL images; with
    return_attention=True, (images, {label: (n_images, H/8, W/8) attention map}).
    """
    if kwargs.get("mask_image") is not None:
        if return_attention:
            raise ValueError("return_attention is not available with mask_image (inpainting)")
        from .inpaint import inpaint  # inpaint builds on this function: a cycle at module level
        return inpaint(model, prompt, init_image, kwargs.pop("mask_image"),
                       color_map_image=color_map_image, color_context=color_context, width=width,
                       height=height, weight_function=weight_function, weight_scale=weight_scale,
                       resample=resample, strict=strict, features=features, **kwargs)
    kwargs.pop("mask_image", None)
    options = kwargs.pop("options", None) or sampling_options(kwargs, img2img=init_image is not None)
    width, height = resolve_size(width, height, color_map_image or init_image)
    check_size(width, height)
    labelled, own = split_regions(parse_color_context(color_context), color_map_image, width,
                                  height, strict)
    regions = RegionContext.build(extract_lora_tags(prompt)[0], color_map_image, labelled, width=width,
                                  height=height, tokenizer=model.cond_stage_model.tokenizer,
                                  weight_function=weight_function, weight_scale=weight_scale,
                                  resample=resample, strict=strict)
    fn_name = weight_function if isinstance(weight_function, str) else "custom"
    extra = {"PwW weight function": fn_name, "PwW weight scale": weight_scale,
             "PwW regions": json.dumps(regions.describe())}
    wanted = replace(features or FeatureOptions(), attention_maps=return_attention
                     or bool(features and features.attention_maps))
    steps = options.steps if init_image is None else max(1, int(options.strength * options.steps))
    built = build_features(wanted, regions, own, n_steps=steps, latent_hw=(height // 8, width // 8),
                           alphas_cumprod=model.alphas_cumprod, encode=model.get_learned_conditioning,
                           tokenizer=model.cond_stage_model.tokenizer)
    extra.update(feature_parameters(wanted, own))
    extra.update(kwargs.pop("extra_parameters", None) or {})
    kwargs["callback"] = built.callback(kwargs.pop("callback", None))
    kwargs["plugins"] = [*kwargs.pop("plugins", ()), *built.plugins]
    images = generate(model, prompt, options, width=width, height=height, regions=regions,
                      init_image=init_image, extra_parameters=extra, extra_chunks=built.extra_chunks,
                      guide=built.guide, **kwargs)
    return (images, built.attention()) if return_attention else images
