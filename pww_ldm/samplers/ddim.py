"""DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models") and PLMS (Liu et al. 2022,
"Pseudo Numerical Methods for Diffusion Models on Manifolds"), in DDPM timestep space.

Transcribed from CompVis `ldm/models/diffusion/ddim.py` and `plms.py`: the same "uniform"
timesteps with their +1 offset, the same coefficients, order of operations and PLMS warm-up.
The samplers drive an eps model `model(x_t (n,...), t (n,) float, sigma (n,), **extra_args)`
(`CFGEpsModel`), where sigma_t = sqrt((1 - abar_t) / abar_t) is handed to the UNet context for
the region attention. x is in DDPM scale: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.

As in CompVis the last step goes to abar_0 (the first trained timestep), not to abar = 1: the
output sits at sigma_min (~0.0292 for SD v1), which is far below what the VAE can see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import trange

from .errors import InvalidSamplerArgumentError, InvalidStepsError
from .k_samplers import NoiseSampler, default_noise_sampler

EpsModel = Callable[..., torch.Tensor]


def make_ddim_timesteps(steps: int, num_timesteps: int = 1000) -> torch.Tensor:
    """(m,) long, ascending: CompVis's "uniform" DDIM timesteps range(0, T, T // steps) + 1.

    As in CompVis, m can differ from `steps` when T // steps does not divide T (steps = 7
    gives 8 timesteps). Entries that the +1 offset pushes to T (where CompVis would index past
    the end of the schedule) are dropped.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise InvalidStepsError(
            f"DDIM/PLMS steps must be an integer in [1, {num_timesteps}], got {steps!r}"
        )
    c = num_timesteps // steps
    ddim_timesteps = np.asarray(list(range(0, num_timesteps, c))) + 1
    return torch.from_numpy(ddim_timesteps[ddim_timesteps < num_timesteps]).long()


def _coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, eta: float):
    # CompVis make_ddim_sampling_parameters, in float64: abar at each timestep, abar at the
    # previous (lower) DDIM timestep (abar_0 for the lowest), and the DDIM noise scale.
    abar = alphas_cumprod.detach().to("cpu", torch.float64)
    ts = timesteps.to("cpu").long()
    a = abar[ts]
    a_prev = torch.cat([abar[:1], abar[ts[:-1]]])
    sigmas = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    return a.tolist(), a_prev.tolist(), sigmas.tolist()


def ddim_sigmas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """(m + 1,) float64 descending k-diffusion sigmas visited by DDIM over `timesteps` (m,):
    sigma of each timestep from the highest down, then sigma of abar_0 where DDIM ends."""
    a, a_prev, _ = _coefficients(alphas_cumprod, timesteps, 0.0)
    abar = torch.tensor(a[::-1] + a_prev[:1], dtype=torch.float64)
    return ((1 - abar) / abar).sqrt()


def _step(x, e_t, a_t, a_prev, sigma_eta, noise):
    # CompVis get_x_prev_and_pred_x0: x0 estimate, direction to x_t, optional fresh noise.
    pred_x0 = (x - (1.0 - a_t) ** 0.5 * e_t) / a_t**0.5
    dir_xt = (1.0 - a_prev - sigma_eta**2) ** 0.5 * e_t
    x_prev = a_prev**0.5 * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + sigma_eta * noise
    return x_prev, pred_x0


def _sigma(a: float) -> float:
    return ((1.0 - a) / a) ** 0.5


@torch.no_grad()
def sample_ddim(
    model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
    extra_args: dict | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None, eta: float = 0.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2020, eq. 12) from the highest of `timesteps` down to abar_0.

    x (n, ...) x_t at t = timesteps[-1]; timesteps (m,) ascending DDIM timesteps (all of
    `make_ddim_timesteps` for txt2img, a prefix for img2img); alphas_cumprod (T,).
    eta = 0: deterministic DDIM; eta = 1: DDPM-like ancestral noise from `noise_sampler`.
    Returns x (n, ...) at abar_0. callback gets {'x', 'i', 't', 'sigma', 'sigma_hat',
    'denoised'} with 'denoised' the x_0 estimate.
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    a, a_prev, sig = _coefficients(alphas_cumprod, timesteps, eta)
    ts = timesteps.tolist()
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(ts), disable=disable):
        index = len(ts) - i - 1
        sigma_t = _sigma(a[index])
        e_t = model(x, ts[index] * s_in, sigma_t * s_in, **extra_args)
        noise = noise_sampler(sigma_t, _sigma(a_prev[index])) if sig[index] > 0 else None
        x_next, pred_x0 = _step(x, e_t, a[index], a_prev[index], sig[index], noise)
        if callback is not None:
            sig_t = x.new_tensor(sigma_t)  # a 0-dim tensor, as k-diffusion's callbacks give
            callback({"x": x, "i": i, "t": ts[index], "sigma": sig_t, "sigma_hat": sig_t,
                      "denoised": pred_x0})  # fmt: skip
        x = x_next
    return x


@torch.no_grad()
def sample_plms(
    model: EpsModel, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
    extra_args: dict | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None, eta: float = 0.0,
) -> torch.Tensor:
    """PLMS sampling (Liu et al. 2022): DDIM's transfer step fed with a 4th-order
    Adams-Bashforth combination of the last eps predictions; the first step is a pseudo
    improved Euler (2 model calls), then orders 2, 3, 4 as history accumulates.

    Shapes and callback as `sample_ddim`. Deterministic: eta must be 0 (as in CompVis).
    """
    if eta != 0:
        raise InvalidSamplerArgumentError(f"PLMS is deterministic: eta must be 0, got {eta}")
    extra_args = {} if extra_args is None else extra_args
    a, a_prev, _ = _coefficients(alphas_cumprod, timesteps, 0.0)
    ts = timesteps.tolist()
    s_in = x.new_ones([x.shape[0]])
    old_eps: list[torch.Tensor] = []
    for i in trange(len(ts), disable=disable):
        index = len(ts) - i - 1
        t_next = ts[max(index - 1, 0)]  # CompVis: time_range[min(i + 1, len - 1)]
        sigma_t = _sigma(a[index])
        e_t = model(x, ts[index] * s_in, sigma_t * s_in, **extra_args)
        if len(old_eps) == 0:
            # Pseudo improved Euler (2nd order): eps at the DDIM prediction of the next point
            x_prev, _ = _step(x, e_t, a[index], a_prev[index], 0.0, None)
            e_t_next = model(x_prev, t_next * s_in, _sigma(a[max(index - 1, 0)]) * s_in,
                             **extra_args)  # fmt: skip
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_next, pred_x0 = _step(x, e_t_prime, a[index], a_prev[index], 0.0, None)
        if callback is not None:
            sig_t = x.new_tensor(sigma_t)  # a 0-dim tensor, as k-diffusion's callbacks give
            callback({"x": x, "i": i, "t": ts[index], "sigma": sig_t, "sigma_hat": sig_t,
                      "denoised": pred_x0})  # fmt: skip
        x = x_next
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x
