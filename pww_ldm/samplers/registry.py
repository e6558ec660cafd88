"""Sampler names users type -> sampler function, family and schedule.

Accepted spellings, case-insensitive, surrounding spaces ignored: the AUTOMATIC1111 web UI names
("Euler a", "DPM++ 2M Karras", "DDIM", ...) and snake_case names ("euler_a", "dpmpp_2m_karras",
"ddim", ...), plus k-diffusion's function names ("euler_ancestral", "dpmpp_2s_ancestral", ...).
"LCM" (alias "k_lcm") is the Latent Consistency Model sampler, for LCM / LCM-LoRA models.
"Karras" variants use the Karras et al. 2022 schedule (rho = 7) between the model's sigma_min and
sigma_max; the others use k-diffusion's default spacing (`DiscreteSchedule.get_sigmas`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ddim, dpmpp, k_samplers, lcm
from .errors import UnknownSamplerError


@dataclass(frozen=True)
class SamplerSpec:
    """One registered sampler.

    name: canonical snake_case name; label: the A1111 name.
    family: "k" (sigma-space k-diffusion sampler over D(x, sigma)), "ddim" or "plms".
    fn: the sampling function. schedule: "default" or "karras" (k family only).
    options: fixed keyword arguments for fn (e.g. solver_type of DPM++ 2M SDE Heun).
    noise: "brownian" for the SDE samplers (noise from `BrownianNoiseSampler`, as k-diffusion's
        Brownian tree), else "independent" (`BatchedNoiseSampler`).
    denoiser: the D(x, sigma) class the sampler runs on, made as denoiser(eps_model, schedule) and
        giving its own `get_sigmas(steps)` (LCM's 50-timestep grid, as A1111); None: `KDenoiser`.
    """

    name: str
    label: str
    family: str
    fn: Callable[..., Any]
    schedule: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    noise: str = "independent"
    denoiser: type | None = None


# (snake name, A1111 label, function, fixed options, extra aliases)
_K_SAMPLERS: list[tuple[str, str, Callable[..., Any], dict[str, Any], tuple[str, ...]]] = [
    ("euler_a", "Euler a", k_samplers.sample_euler_ancestral, {}, ("euler_ancestral",)),
    ("euler", "Euler", k_samplers.sample_euler, {}, ()),
    ("lms", "LMS", k_samplers.sample_lms, {}, ()),
    ("heun", "Heun", k_samplers.sample_heun, {}, ()),
    ("dpm_2", "DPM2", k_samplers.sample_dpm_2, {}, ("dpm2",)),
    ("dpm_2_a", "DPM2 a", k_samplers.sample_dpm_2_ancestral, {}, ("dpm_2_ancestral", "dpm2_a")),
    ("dpmpp_2s_a", "DPM++ 2S a", dpmpp.sample_dpmpp_2s_ancestral, {}, ("dpmpp_2s_ancestral",)),
    ("dpmpp_2m", "DPM++ 2M", dpmpp.sample_dpmpp_2m, {}, ()),
    ("dpmpp_sde", "DPM++ SDE", dpmpp.sample_dpmpp_sde, {}, ()),
    ("dpmpp_2m_sde", "DPM++ 2M SDE", dpmpp.sample_dpmpp_2m_sde, {}, ()),
    (
        "dpmpp_2m_sde_heun",
        "DPM++ 2M SDE Heun",
        dpmpp.sample_dpmpp_2m_sde,
        {"solver_type": "heun"},
        (),
    ),
    ("lcm", "LCM", lcm.sample_lcm, {}, ("k_lcm",)),  # A1111's label and alias
]


_BROWNIAN = (dpmpp.sample_dpmpp_sde, dpmpp.sample_dpmpp_2m_sde)
_SCHEDULES = (("default", "", ""), ("karras", "_karras", " Karras"))


def _build() -> tuple[dict[str, SamplerSpec], list[SamplerSpec]]:
    specs: list[SamplerSpec] = []
    lookup: dict[str, SamplerSpec] = {}
    for name, label, fn, options, aliases in _K_SAMPLERS:
        for schedule, suffix, label_suffix in _SCHEDULES:
            noise = "brownian" if fn in _BROWNIAN else "independent"
            denoiser = lcm.LCMDenoiser if fn is lcm.sample_lcm else None  # A1111's LCM denoiser
            spec = SamplerSpec(
                name + suffix, label + label_suffix, "k", fn, schedule, options, noise, denoiser
            )
            specs.append(spec)
            for key in (spec.name, spec.label, *(a + suffix for a in aliases)):
                lookup[key.lower()] = spec
    for name, label, fn in (("ddim", "DDIM", ddim.sample_ddim), ("plms", "PLMS", ddim.sample_plms)):
        spec = SamplerSpec(name, label, name, fn)
        specs.append(spec)
        lookup[name] = spec
    return lookup, specs


_LOOKUP, SAMPLERS = _build()


def sampler_names(style: str = "a1111") -> list[str]:
    """The canonical names, A1111 labels (style="a1111") or snake_case (style="snake")."""
    return [s.label if style == "a1111" else s.name for s in SAMPLERS]


def get_sampler(name: str) -> SamplerSpec:
    """The `SamplerSpec` for a user-typed name; `UnknownSamplerError` listing valid names."""
    key = " ".join(name.split()).lower() if isinstance(name, str) else None
    spec = _LOOKUP.get(key) if key is not None else None
    if spec is None:
        raise UnknownSamplerError(
            f"unknown sampler {name!r}. Valid names (case-insensitive): "
            f"{', '.join(sampler_names('a1111'))}; or snake_case: "
            f"{', '.join(sampler_names('snake'))}"
        )
    return spec
