"""`sample_latents`: the one entry point the pipeline calls to turn conditioning into latents.

It checks the input against the options, draws the seeded starting noise once (one generator per
image), builds the schedule and the guided denoiser, and runs the chosen sampler for txt2img or
img2img (CompVis img2img semantics: `strength` selects how far into the schedule the init latent
is noised and int(strength * steps) steps are run): `_run_k` for the k-diffusion family,
`_run_timesteps` for DDIM and PLMS.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..approx import Approximations
from ..conditioning import AttentionPlugin
from .ddim import make_ddim_timesteps
from .denoiser import CFGEpsModel, KDenoiser
from .errors import InvalidSamplerArgumentError, InvalidStrengthError
from .noise import BatchedNoiseSampler, BrownianNoiseSampler, draw_noise, make_generators
from .options import SamplingOptions
from .schedules import DiscreteSchedule, get_sigmas_karras


def _check_strength(options: SamplingOptions, init_latent: torch.Tensor | None) -> None:
    if init_latent is None and options.strength is not None:
        raise InvalidStrengthError(
            "strength is only for img2img: pass init_latent too, or leave strength out")
    if init_latent is not None and options.strength is None:
        raise InvalidStrengthError("img2img needs a strength in (0, 1], e.g. strength=0.75")


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise InvalidSamplerArgumentError(
            f"shape must be the latent shape (channels, h, w) of positive ints, got {shape}")
    return shape


def _check_tensor(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise InvalidSamplerArgumentError(
            f"{name} has shape {tuple(t.shape)}, expected {shape} (one row per seed)")


def _img2img_steps(strength: float, steps: int) -> int:
    # CompVis img2img: t_enc = int(strength * steps); at least one step so that a tiny
    # strength still denoises the noise it adds.
    return max(1, int(strength * steps))


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    # Pass only the keyword arguments the sampler accepts (eta, noise_sampler, ...).
    accepted = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def _k_sigmas(options: SamplingOptions, schedule: DiscreteSchedule) -> torch.Tensor:
    if options.spec.schedule == "karras":
        return get_sigmas_karras(options.steps, schedule.sigma_min.item(), schedule.sigma_max.item())
    return schedule.get_sigmas(options.steps)


def _run_k(eps_model: CFGEpsModel, schedule: DiscreteSchedule, options: SamplingOptions,
           noise: torch.Tensor, init: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor:
    """k-diffusion family: x = noise * sigma_0 (txt2img) or init + noise * sigma_0 (img2img).

    The sampler's own denoiser (LCM's grid) brings its own default sigmas; Karras sigmas otherwise."""
    spec = options.spec
    denoiser = (spec.denoiser or KDenoiser)(eps_model, schedule)
    own = spec.denoiser is not None and spec.schedule == "default"
    sigmas = denoiser.get_sigmas(options.steps) if own else _k_sigmas(options, schedule)
    sigmas = sigmas.to(device=noise.device, dtype=torch.float32)
    if init is None:
        x = noise * sigmas[0]
    else:
        sigmas = sigmas[-(_img2img_steps(options.strength, options.steps) + 1):]
        x = init + noise * sigmas[0]
    return spec.fn(denoiser, x, sigmas, **_call(spec.fn, kwargs))


def _run_timesteps(eps_model: CFGEpsModel, schedule: DiscreteSchedule, options: SamplingOptions,
                   noise: torch.Tensor, init: torch.Tensor | None, kwargs: dict[str, Any]
                   ) -> torch.Tensor:
    """DDIM / PLMS in timestep space; img2img starts at sqrt(abar) init + sqrt(1 - abar) noise."""
    timesteps = make_ddim_timesteps(options.steps, schedule.num_timesteps)
    if init is None:
        x = noise
    else:
        timesteps = timesteps[: _img2img_steps(options.strength, options.steps)]
        abar = schedule.alphas_cumprod[timesteps[-1]].to(torch.float64).item()
        x = abar**0.5 * init + (1 - abar) ** 0.5 * noise
    fn = options.spec.fn
    return fn(eps_model, x, timesteps, schedule.alphas_cumprod, **_call(fn, kwargs))


def _sampler_kwargs(options: SamplingOptions, extra_args: dict[str, Any],
                    callback: Callable[[dict[str, Any]], None] | None, disable_progress: bool,
                    noise_sampler: Any) -> dict[str, Any]:
    """Every keyword a sampler function may take; `_call` keeps those it accepts."""
    kwargs: dict[str, Any] = {"extra_args": extra_args, "callback": callback,
                              "disable": True if disable_progress else None,
                              "noise_sampler": noise_sampler, **options.spec.options,
                              **dict(options.sampler_options)}
    if options.eta is not None:
        kwargs["eta"] = options.eta
    return kwargs


def sample_latents(
    model: Any,
    options: SamplingOptions,
    *,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    shape: Sequence[int],
    seeds: Sequence[int],
    plugins: Sequence[AttentionPlugin] = (),
    init_latent: torch.Tensor | None = None,
    noise_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable_progress: bool = False,
    generator_device: torch.device | str = "cpu",
    model_kwargs: dict[str, Any] | None = None,
    guide: Any = None,
    approx: Approximations | None = None,
) -> torch.Tensor:
    """Sample n = len(seeds) latents (n, *shape) float32, unscaled (before 1 / scale_factor).

    model: `LatentDiffusion`-like (`alphas_cumprod` (T,), `apply_model`). options: sampler,
    steps, CFG scale, eta, strength, sampler options. cond (n or 1, T, C); uncond likewise or
    None (no guidance). shape: (4, h, w). seeds: one per image; image k's generator draws its
    starting noise, then all noise the sampler adds to it, so a batch equals single runs.
    plugins: attention plug-ins handed to every UNet call (e.g. Paint-with-Words).
    init_latent (n, *shape) with options.strength: img2img; k-samplers keep the last
    int(strength * steps) + 1 sigmas and start at init + sigma * noise; DDIM/PLMS run the lowest
    int(strength * steps) timesteps. noise_transform: maps the seeded starting noise (n, *shape)
    to the noise to start from (e.g. per-region seeds); the noise is drawn once either way.
    callback: called each step with k-diffusion's dict {'x', 'i', 'sigma', 'sigma_hat', 'denoised'}.
    model_kwargs: further keywords of every CFGEpsModel call (inpainting: c_concat, keep_latent,
    keep_mask), tensors moved to `device`. guide: latent guidance handed to the CFGEpsModel
    (pww_ldm.region.guidance.RegionGuidance), None = none. approx: the optional approximations
    of the UNet (pww_ldm.approx: token merging, feature caching), their state fresh for this run.
    """
    _check_strength(options, init_latent)
    generators = make_generators(seeds, generator_device)
    n, shape = len(generators), _check_shape(shape)
    _check_tensor("init_latent", init_latent, (n, *shape))
    device = model.alphas_cumprod.device if device is None else device
    noise = draw_noise(generators, shape, device, torch.float32)
    if noise_transform is not None:
        noise = noise_transform(noise)
        _check_tensor("the transformed starting noise", noise, (n, *shape))
        noise = noise.to(device=device, dtype=torch.float32)
    init = None if init_latent is None else init_latent.to(device=device, dtype=torch.float32)
    noise_cls = BrownianNoiseSampler if options.spec.noise == "brownian" else BatchedNoiseSampler
    extra_args = {"cond": cond.to(device), "guidance_scale": options.guidance_scale,
                  "plugins": tuple(plugins), "uncond": None if uncond is None else uncond.to(device),
                  **{k: v.to(device) for k, v in (model_kwargs or {}).items()}}
    if guide is not None:
        extra_args["guide"] = guide
    kwargs = _sampler_kwargs(options, extra_args, callback, disable_progress,
                             noise_cls(generators, shape, device, torch.float32))
    schedule = DiscreteSchedule(model.alphas_cumprod).to(device)
    run = _run_k if options.spec.family == "k" else _run_timesteps
    with torch.no_grad():
        return run(CFGEpsModel(model, approx), schedule, options, noise, init, kwargs).float()
