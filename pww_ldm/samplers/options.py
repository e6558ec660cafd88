"""`SamplingOptions`: how to sample, checked once when made, passed down whole.

One frozen object instead of loose parameters handed by hand from `paint_with_words` through
`generate` to `sample_latents`. Its checks need no model, so front ends build it before anything
expensive (the CLI before the checkpoint loads, the web UI before a request queues).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .errors import InvalidSamplerArgumentError, InvalidStepsError, InvalidStrengthError
from .registry import SamplerSpec, get_sampler

# Sampler parameters that sample_latents sets itself: not user options.
_NOT_OPTIONS = {"model", "x", "sigmas", "timesteps", "alphas_cumprod", "extra_args", "callback",
                "disable", "noise_sampler"}  # fmt: skip


@dataclass(frozen=True)
class SamplingOptions:
    """Sampler settings of one generation.

    sampler: a registry name ("Euler a", "dpmpp_2m_karras", "DDIM", ...). steps: integer >= 1.
    guidance_scale: CFG scale (1: no guidance, half the UNet work). eta: None for each sampler's
    default (DDIM 0, ancestral/SDE samplers 1), else passed to every sampler that has an eta.
    strength: img2img denoising strength in (0, 1], None for txt2img. sampler_options: extra
    keyword arguments of the sampler function (s_churn, s_noise, order, ...), checked by name.
    """

    sampler: str = "euler_a"
    steps: int = 30
    guidance_scale: float = 7.5
    eta: float | None = None
    strength: float | None = None
    sampler_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = get_sampler(self.sampler)  # raises UnknownSamplerError listing the names
        steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidStepsError(f"steps must be an integer >= 1, got {steps!r}; try steps=30")
        if not isinstance(self.guidance_scale, (int, float)) or not math.isfinite(self.guidance_scale):
            raise InvalidSamplerArgumentError(
                f"guidance_scale must be a finite number, got {self.guidance_scale!r}; try 7.5")
        if self.strength is not None and not 0.0 < float(self.strength) <= 1.0:
            raise InvalidStrengthError(
                f"strength must be in (0, 1] (0 keeps the init image, 1 ignores it), "
                f"got {self.strength!r}")
        accepted = set(inspect.signature(spec.fn).parameters) - _NOT_OPTIONS
        unknown = set(self.sampler_options) - accepted
        if unknown:
            raise InvalidSamplerArgumentError(
                f"sampler {spec.label!r} has no option(s) {sorted(unknown)}; "
                f"its options are {sorted(accepted)}")
        object.__setattr__(self, "sampler_options", MappingProxyType(dict(self.sampler_options)))

    @property
    def spec(self) -> SamplerSpec:
        """The registered sampler these options name."""
        return get_sampler(self.sampler)


SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingOptions))  # the keywords that make one
