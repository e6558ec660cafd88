"""Noise schedules: the discrete SD v1 schedule and the k-diffusion spacings over it.

Notation of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative
Models"): x_sigma = x_0 + sigma * eps. A DDPM timestep t with cumulative alpha abar_t has
sigma_t = sqrt((1 - abar_t) / abar_t), and x_sigma = x_t / sqrt(abar_t).

Formulas and order of operations follow k-diffusion (`k_diffusion/external.py`
`DiscreteSchedule`, `k_diffusion/sampling.py` `get_sigmas_*`) so that the same `alphas_cumprod`
gives the same sigmas bit for bit in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import InvalidStepsError


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n + 1,): the schedule ends at sigma = 0 (the clean sample)."""
    return torch.cat([x, x.new_zeros([1])])


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidStepsError(f"number of sigmas must be an integer >= 1, got {n!r}")


def _as_float(v: float | torch.Tensor) -> float:
    # A1111 passes `.item()` floats; a 0-dim tensor is accepted and treated the same way.
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def get_sigmas_karras(
    n: int,
    sigma_min: float | torch.Tensor,
    sigma_max: float | torch.Tensor,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The schedule of Karras et al. 2022 (eq. 5): (n + 1,) sigmas, max to min, then 0.

    Uniform in sigma^(1/rho); rho = 7 spends most steps at low noise.
    """
    _check_n(n)
    ramp = torch.linspace(0, 1, n, dtype=dtype)
    min_inv_rho = _as_float(sigma_min) ** (1 / rho)
    max_inv_rho = _as_float(sigma_max) ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def get_sigmas_exponential(
    n: int,
    sigma_min: float | torch.Tensor,
    sigma_max: float | torch.Tensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(n + 1,) sigmas uniform in log sigma from sigma_max to sigma_min, then 0 (k-diffusion)."""
    _check_n(n)
    lo, hi = math.log(_as_float(sigma_min)), math.log(_as_float(sigma_max))
    sigmas = torch.linspace(hi, lo, n, device=device, dtype=dtype).exp()
    return append_zero(sigmas)


class DiscreteSchedule(nn.Module):
    """Map between DDPM timesteps and sigmas for a model trained on a discrete schedule.

    alphas_cumprod: (T,) abar_t of the training schedule (SD v1: T = 1000, betas =
        linspace(sqrt(0.00085), sqrt(0.012), T) ** 2). Kept in its own dtype: float32, as
        CompVis stores it, reproduces k-diffusion's `CompVisDenoiser` exactly.
    quantize: default of `sigma_to_t`: round to the nearest trained timestep (k-diffusion's
        `quantize=True`) instead of interpolating in log sigma.

    Buffers: `sigmas` (T,) ascending, `log_sigmas` (T,), `alphas_cumprod` (T,).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, quantize: bool = False) -> None:
        super().__init__()
        abar = alphas_cumprod.detach()
        if not abar.is_floating_point():
            abar = abar.float()
        sigmas = ((1 - abar) / abar) ** 0.5
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.quantize = quantize

    @property
    def num_timesteps(self) -> int:
        """T, the number of trained timesteps."""
        return self.sigmas.shape[0]

    @property
    def sigma_min(self) -> torch.Tensor:
        """0-dim: sigma of timestep 0 (SD v1: ~0.0292)."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        """0-dim: sigma of timestep T - 1 (SD v1: ~14.6146)."""
        return self.sigmas[-1]

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """(n + 1,) sigmas at t = linspace(T - 1, 0, n) (log-sigma interpolated), then 0.

        k-diffusion's default spacing (the A1111 schedule of "Euler a" etc.). n=None gives all
        T trained sigmas, descending, then 0.
        """
        if n is None:
            return append_zero(self.sigmas.flip(0))
        _check_n(n)
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Any-shape sigma -> continuous timestep t of the same shape (float), or long if quantised.

        Linear interpolation in log sigma between the two neighbouring trained timesteps,
        clamped to [0, T - 1] (k-diffusion `DiscreteSchedule.sigma_to_t`).
        """
        quantize = self.quantize if quantize is None else quantize
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        # Index of the last trained log sigma <= log_sigma, kept one below the top so that
        # high_idx stays in range; w is then clamped so sigmas outside the table clamp.
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = (low - log_sigma) / (low - high)
        w = w.clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Any-shape (possibly fractional) timestep t -> sigma, interpolating log sigma."""
        t = t.to(self.log_sigmas.dtype)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()


def sd_v1_alphas_cumprod(
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(T,) abar_t of SD v1's "linear" schedule, computed as CompVis does (float64, then cast).

    betas = linspace(sqrt(linear_start), sqrt(linear_end), T) ** 2; abar = cumprod(1 - betas).
    Useful for tests and for models without a schedule buffer.
    """
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas**2, dim=0).to(dtype)
