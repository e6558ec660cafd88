"""Where in the sampling a UNet call is: the step counter and the timestep of a noise level.

Time-decayed plug-ins (self-attention modulation: first 30 % of the steps, weight (t/1000)^5;
attention maps over a step range) need the step index and the DDPM timestep t. A layer hands
plug-ins only sigma, so t comes from sigma and the model's alphas_cumprod (the inverse of the
k-diffusion discrete schedule, as `DiscreteSchedule.sigma_to_t`), and the step index from a
`StepClock` that the pipeline advances from the sampler's per-step callback.
"""

from __future__ import annotations

import torch


class StepClock:
    """The index of the sampling step now running, out of `n_steps`.

    The pipeline calls `advance(info)` from the sampler callback (which k-diffusion and DDIM/PLMS
    call after step info["i"]), so during step i every UNet call sees `step == i`, including the
    second evaluation of two-evaluation samplers (Heun, DPM2).
    """

    def __init__(self, n_steps: int) -> None:
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps = n_steps
        self.step = 0

    def advance(self, info: dict) -> None:
        """Sampler callback: step info["i"] is done, the next one starts."""
        self.step = int(info["i"]) + 1

    def fraction(self) -> float:
        """step / n_steps: 0 during the first step; DenseDiffusion's window is fraction < 0.3."""
        return self.step / self.n_steps

    def __repr__(self) -> str:
        return f"StepClock(step={self.step}, n_steps={self.n_steps})"


def sigma_to_t(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Fractional DDPM timesteps (n,) of k-diffusion noise levels sigma (n,).

    sigma_t = sqrt((1 - abar_t) / abar_t); t is interpolated linearly in log sigma between the
    two neighbouring discrete timesteps, clamped to [0, T - 1] (T = len(alphas_cumprod)).
    """
    table = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt().log()  # (T,), rising
    log_sigma = sigma.double().clamp_min(1e-10).log().to(table.device)
    high = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
    low = high - 1
    frac = ((log_sigma - table[low]) / (table[high] - table[low])).clamp(0, 1)
    return (low + frac).to(sigma.dtype).to(sigma.device)
