"""Sampling: schedules, the guided denoiser, k-diffusion-style samplers, DDIM and PLMS.

The pipeline calls `sample_latents`; the rest is exported for tests, scripts and experiments.
"""

from .ddim import ddim_sigmas, make_ddim_timesteps, sample_ddim, sample_plms
from .denoiser import CFGEpsModel, KDenoiser, model_dtype
from .dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_sde,
)
from .errors import (
    InvalidSamplerArgumentError,
    InvalidStepsError,
    InvalidStrengthError,
    SamplerInputError,
    UnknownSamplerError,
)
from .k_samplers import (
    default_noise_sampler,
    get_ancestral_step,
    linear_multistep_coeff,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
    to_d,
)
from .noise import (
    BatchedNoiseSampler,
    BrownianNoiseSampler,
    default_brownian_noise_sampler,
    draw_noise,
    initial_noise,
    make_generators,
)
from .options import SAMPLING_FIELDS, SamplingOptions
from .registry import SAMPLERS, SamplerSpec, get_sampler, sampler_names
from .run import sample_latents
from .schedules import (
    DiscreteSchedule,
    append_zero,
    get_sigmas_exponential,
    get_sigmas_karras,
    sd_v1_alphas_cumprod,
)

__all__ = [
    "SAMPLERS",
    "SAMPLING_FIELDS",
    "BatchedNoiseSampler",
    "BrownianNoiseSampler",
    "CFGEpsModel",
    "DiscreteSchedule",
    "InvalidSamplerArgumentError",
    "InvalidStepsError",
    "InvalidStrengthError",
    "KDenoiser",
    "SamplerInputError",
    "SamplerSpec",
    "UnknownSamplerError",
    "append_zero",
    "ddim_sigmas",
    "default_brownian_noise_sampler",
    "default_noise_sampler",
    "draw_noise",
    "get_ancestral_step",
    "get_sampler",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "initial_noise",
    "linear_multistep_coeff",
    "make_ddim_timesteps",
    "make_generators",
    "model_dtype",
    "sample_ddim",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_latents",
    "SamplingOptions",
    "sample_lms",
    "sample_plms",
    "sampler_names",
    "sd_v1_alphas_cumprod",
    "to_d",
]
