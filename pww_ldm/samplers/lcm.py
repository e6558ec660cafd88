"""The LCM sampler (Luo et al. 2023, "Latent Consistency Models", Algorithm 1: multistep sampling).

Each step asks the consistency model for its clean estimate x_0 = f(x, sigma_i), then jumps to
the next noise level with fresh noise: x = x_0 + sigma_{i+1} * z, z ~ N(0, I) (no ODE step).
`sample_lcm` is k-diffusion's / A1111's `sample_lcm` (modules/sd_samplers_lcm.py).

A1111's "LCM" also swaps the denoiser (`LCMCompVisDenoiser`): LCM models are distilled on a
grid of 50 of the 1000 DDPM timesteps (t = 19, 39, ..., 999), so every sigma is snapped to the
nearest grid timestep, the schedule is spaced over that grid, and the output goes through
the consistency-model boundary condition f = c_skip(t) x + c_out(t) D(x), with
c_skip = sd^2 / ((10 t)^2 + sd^2), c_out = 10 t / sqrt((10 t)^2 + sd^2), sd = 0.5 (Song et al.
2023, "Consistency Models", eq. 4; LCM's timestep_scaling 10). `LCMDenoiser` is that denoiser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import trange

from .k_samplers import Callback, Denoiser, NoiseSampler, _report, append_dims, default_noise_sampler
from .schedules import DiscreteSchedule, append_zero


@torch.no_grad()
def sample_lcm(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """LCM multistep sampling: x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1] (usually 0).

    Per step: x = D(x, sigma_i) + sigma_{i+1} * noise_sampler(sigma_i, sigma_{i+1}); no noise is
    added on the step to sigma = 0. Meant for LCM / LCM-LoRA models at 4-8 steps, CFG 1-2.
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


class LCMDenoiser(nn.Module):
    """A1111's `LCMCompVisDenoiser`: D(x, sigma) of an eps model on LCM's 50-timestep grid.

    eps_model: `CFGEpsModel`-like, eps_model(x_in (n,...), t (n,), sigma (n,), **kwargs).
    schedule: the model's full `DiscreteSchedule` (T = 1000). forward(x (n,...), sigma (n,))
    -> the boundary-conditioned estimate (n,...); the UNet sees the snapped timestep and its sigma.
    """

    def __init__(self, eps_model: Any, schedule: DiscreteSchedule, original_steps: int = 50) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.skip = schedule.num_timesteps // original_steps
        grid = torch.arange(original_steps, device=schedule.sigmas.device) * self.skip + self.skip - 1
        self.grid = DiscreteSchedule(schedule.alphas_cumprod[grid])
        self.sigma_data = 0.5

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Any-shape sigma -> the nearest grid timestep (long), nearest in log sigma."""
        return self.grid.sigma_to_t(sigma, quantize=True) * self.skip + (self.skip - 1)

    def get_sigmas(self, n: int) -> torch.Tensor:
        """(n + 1,) sigmas at t = linspace(999, 19, n) on the grid (log-sigma interpolated), then 0."""
        t_max, t_min = self.sigma_to_t(self.grid.sigma_max), self.sigma_to_t(self.grid.sigma_min)
        t = torch.linspace(float(t_max), float(t_min), n, device=self.grid.sigmas.device)
        index = ((t - (self.skip - 1)) / self.skip).clamp(0, self.grid.num_timesteps - 1)
        return append_zero(self.grid.t_to_sigma(index))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """(n,...), (n,) -> c_skip * x + c_out * (x - sigma * eps), t snapped to the grid."""
        t = self.sigma_to_t(sigma)
        sigma_t = self.grid.sigmas[(t - (self.skip - 1)) // self.skip].to(sigma.dtype)
        c_in = append_dims(1 / (sigma**2 + 1) ** 0.5, x.ndim)
        eps = self.eps_model(x * c_in, t.to(sigma.dtype), sigma_t, **kwargs)
        denoised = x - eps * append_dims(sigma, x.ndim)
        scaled = append_dims(t.to(x.dtype), x.ndim) * 10.0
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_out * denoised + c_skip * x
