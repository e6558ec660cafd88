"""`sample_latents`: the one entry point the pipeline calls to turn conditioning into latents.

It checks the input, builds the seeded noise (one generator per image), the schedule, the
guided denoiser, and runs the chosen sampler for txt2img or img2img (CompVis img2img semantics:
`strength` selects how far into the schedule the init latent is noised and int(strength * steps)
steps are run).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .ddim import make_ddim_timesteps
from .denoiser import CFGEpsModel, KDenoiser
from .errors import InvalidSamplerArgumentError, InvalidStepsError, InvalidStrengthError
from .noise import BatchedNoiseSampler, BrownianNoiseSampler, draw_noise, make_generators
from .registry import SamplerSpec, get_sampler
from .schedules import DiscreteSchedule, get_sigmas_karras


def _check(steps: int, strength: float | None, init_latent: torch.Tensor | None) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidStepsError(f"steps must be an integer >= 1, got {steps!r}; try steps=30")
    if init_latent is None and strength is not None:
        raise InvalidStrengthError(
            "strength is only for img2img: pass init_latent too, or leave strength out"
        )
    if init_latent is not None:
        if strength is None:
            raise InvalidStrengthError("img2img needs a strength in (0, 1], e.g. strength=0.75")
        if not 0.0 < float(strength) <= 1.0:
            raise InvalidStrengthError(
                f"strength must be in (0, 1] (0 keeps the init image, 1 ignores it), "
                f"got {strength!r}"
            )


# Sampler parameters that sample_latents sets itself: not user options.
_NOT_OPTIONS = {"model", "x", "sigmas", "timesteps", "alphas_cumprod", "extra_args", "callback",
                "disable", "noise_sampler"}  # fmt: skip


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise InvalidSamplerArgumentError(
            f"shape must be the latent shape (channels, h, w) of positive ints, got {shape}"
        )
    return shape


def _check_tensor(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise InvalidSamplerArgumentError(
            f"{name} has shape {tuple(t.shape)}, expected {shape} (one row per seed)"
        )


def _img2img_steps(strength: float, steps: int) -> int:
    # CompVis img2img: t_enc = int(strength * steps); at least one step so that a tiny
    # strength still denoises the noise it adds.
    return max(1, int(strength * steps))


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    # Pass only the keyword arguments the sampler accepts (eta, noise_sampler, ...).
    accepted = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def _k_sigmas(spec: SamplerSpec, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    if spec.schedule == "karras":
        return get_sigmas_karras(steps, schedule.sigma_min.item(), schedule.sigma_max.item())
    return schedule.get_sigmas(steps)


def sample_latents(
    model: Any,
    *,
    sampler: str,
    steps: int,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance_scale: float,
    shape: Sequence[int],
    seeds: Sequence[int],
    regions: Any = None,
    init_latent: torch.Tensor | None = None,
    strength: float | None = None,
    initial_noise: torch.Tensor | None = None,
    eta: float | None = None,
    device: torch.device | str | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable_progress: bool = False,
    sampler_options: Mapping[str, Any] | None = None,
    generator_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sample n = len(seeds) latents (n, *shape) float32, unscaled (before 1 / scale_factor).

    model: `LatentDiffusion`-like (`alphas_cumprod` (T,), `apply_model`). sampler: a registry
    name ("Euler a", "dpmpp_2m_karras", "DDIM", ...). cond (n or 1, 77, C); uncond likewise or
    None; guidance_scale: CFG scale (1 or uncond None: no guidance, half the UNet work).
    shape: (4, h, w). seeds: one per image; image k's generator draws its starting noise, then
    all noise the sampler adds to it, so a batch equals single runs of each seed.
    regions: opaque Paint-with-Words weights, forwarded to the UNet context.
    init_latent (n, *shape) + strength in (0, 1]: img2img; k-samplers keep the last
    int(strength * steps) + 1 sigmas of the `steps` schedule and start at init + sigma * noise;
    DDIM/PLMS run the lowest int(strength * steps) timesteps, starting at
    sqrt(abar) init + sqrt(1 - abar) noise with abar of the first timestep run.
    initial_noise (n, *shape): replaces the seeded starting noise (e.g. per-region seeds).
    eta: None for each sampler's default (DDIM 0, ancestral/SDE samplers 1), else passed to
    every sampler that has an eta. sampler_options: extra keyword arguments for the sampler
    function (s_churn, s_noise, order, ...). callback: called each step with k-diffusion's
    dict {'x', 'i', 'sigma', 'sigma_hat', 'denoised'}.
    """
    spec = get_sampler(sampler)
    _check(steps, strength, init_latent)
    generators = make_generators(seeds, generator_device)
    n, shape = len(generators), _check_shape(shape)
    _check_tensor("init_latent", init_latent, (n, *shape))
    _check_tensor("initial_noise", initial_noise, (n, *shape))
    if device is None:
        device = model.alphas_cumprod.device
    # Always draw the seeded starting noise, even when initial_noise replaces it, so that the
    # generators are at the same point for the ancestral noise either way.
    noise = draw_noise(generators, shape, device, torch.float32)
    if initial_noise is not None:
        noise = initial_noise.to(device=device, dtype=torch.float32)
    init = None if init_latent is None else init_latent.to(device=device, dtype=torch.float32)

    noise_cls = BrownianNoiseSampler if spec.noise == "brownian" else BatchedNoiseSampler
    eps_model = CFGEpsModel(model)
    extra_args = {"cond": cond.to(device), "guidance_scale": guidance_scale, "regions": regions,
                  "uncond": None if uncond is None else uncond.to(device)}  # fmt: skip
    kwargs: dict[str, Any] = {
        "extra_args": extra_args,
        "callback": callback,
        "disable": True if disable_progress else None,
        "noise_sampler": noise_cls(generators, shape, device, torch.float32),
        **spec.options,
        **dict(sampler_options or {}),
    }
    if eta is not None:
        kwargs["eta"] = eta
    options = set(inspect.signature(spec.fn).parameters) - _NOT_OPTIONS
    unknown = set(sampler_options or {}) - options
    if unknown:
        raise InvalidSamplerArgumentError(
            f"sampler {spec.label!r} has no option(s) {sorted(unknown)}; "
            f"its options are {sorted(options)}"
        )
    schedule = DiscreteSchedule(model.alphas_cumprod).to(device)

    with torch.no_grad():
        if spec.family == "k":
            sigmas = _k_sigmas(spec, schedule, steps).to(device=device, dtype=torch.float32)
            if init is None:
                x = noise * sigmas[0]
            else:
                sigmas = sigmas[-(_img2img_steps(strength, steps) + 1) :]
                x = init + noise * sigmas[0]
            denoiser = KDenoiser(eps_model, schedule)
            return spec.fn(denoiser, x, sigmas, **_call(spec.fn, kwargs)).float()

        timesteps = make_ddim_timesteps(steps, schedule.num_timesteps)
        if init is None:
            x = noise
        else:
            timesteps = timesteps[: _img2img_steps(strength, steps)]
            abar = schedule.alphas_cumprod[timesteps[-1]].to(torch.float64).item()
            x = abar**0.5 * init + (1 - abar) ** 0.5 * noise
        fn_kwargs = _call(spec.fn, kwargs)
        return spec.fn(eps_model, x, timesteps, schedule.alphas_cumprod, **fn_kwargs).float()
