"""k-diffusion's samplers over a denoiser D(x, sigma): Euler, Heun, DPM-2, LMS (+ ancestral).

Every sampler has k-diffusion's signature `sample_x(model, x, sigmas, extra_args=None,
callback=None, disable=None, ...)`: model(x (n,...), sigma (n,), **extra_args) -> denoised;
x (n,...) starts at sigma = sigmas[0] (x = noise * sigmas[0] for txt2img); sigmas (m + 1,)
descending, usually ending in 0; returns x (n,...) at sigmas[-1]. Formulas and order of
operations are k-diffusion's (`k_diffusion/sampling.py`, v0.1), so the same inputs and noise
give the same output. Differences, all about where randomness comes from: noise is drawn only
through `noise_sampler(sigma, sigma_next)` (default `torch.randn_like`), and the s_churn noise of
Euler/Heun/DPM-2 is drawn only when it is used (k-diffusion draws, and discards, it every step).
The DPM-Solver++ family is in `dpmpp.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import trange

Denoiser = Callable[..., torch.Tensor]
NoiseSampler = Callable[[Any, Any], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """(n,) -> (n, 1, ..., 1) with target_dims dimensions, to broadcast per-row scalars."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Karras ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma; x, denoised (n,...)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: Any, sigma_to: Any, eta: float = 1.0) -> tuple[Any, Any]:
    """(sigma_down, sigma_up) of an ancestral step sigma_from -> sigma_to (0-dim tensors).

    Step deterministically down to sigma_down, then add sigma_up of fresh noise, with
    sigma_down^2 + sigma_up^2 = sigma_to^2; eta = 1 is DDPM's ancestral step (Ho et al. 2020),
    eta = 0 a deterministic step.
    """
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """`ns(sigma, sigma_next)` -> standard normal like x (n,...), from the global RNG."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler):
    # Karras et al. 2022 Algorithm 2, lines 4-6: raise the noise level from sigma_i to sigma_hat
    # by adding fresh noise before the step ("churn"); a no-op with the default s_churn = 0.
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        ns = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        eps = ns(sigmas[i], sigma_hat) * s_noise
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _report(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


@torch.no_grad()
def sample_euler(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, Algorithm 2 of Karras et al. 2022 (1st order).

    x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral sampling with Euler steps ("Euler a"; the DDPM noise of Ho et al. 2020 on
    the Karras et al. 2022 ODE). x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1]."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigma_down - sigmas[i]
        x = x + d * dt
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Heun steps, Algorithm 2 of Karras et al. 2022 (2nd order; Euler on the step to 0).

    x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler: D(x, 0) would be needed for the correction
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Midpoint steps at the log-sigma midpoint, inspired by DPM-Solver-2 (Lu et al. 2022) and
    Algorithm 2 of Karras et al. 2022 (2nd order; Euler on the step to 0).

    x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            dt = sigmas[i + 1] - sigma_hat
            x = x + d * dt
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            dt_1 = sigma_mid - sigma_hat
            dt_2 = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver-2-style midpoint steps (Lu et al. 2022).

    x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            dt_1 = sigma_mid - sigmas[i]
            dt_2 = sigma_down - sigmas[i]
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial of node t[i-j] among the
    nodes t[i], ..., t[i-order+1]: the Adams-Bashforth weight of d_{i-j}. t: (m + 1,) sigmas.

    k-diffusion integrates with scipy's `quad`; the integrand is a polynomial of degree
    order - 1, so Gauss-Legendre with `order` nodes is exact (same value up to rounding).
    """
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    a, b = float(t[i]), float(t[i + 1])
    nodes, weights = np.polynomial.legendre.leggauss(order)
    tau = (b - a) / 2 * nodes + (a + b) / 2
    prod = np.ones_like(tau)
    for k in range(order):
        if j == k:
            continue
        prod *= (tau - float(t[i - k])) / (float(t[i - j]) - float(t[i - k]))
    return float((b - a) / 2 * np.sum(weights * prod))


@torch.no_grad()
def sample_lms(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma over the last `order` derivatives) on the
    Karras et al. 2022 ODE, k-diffusion's "LMS"; the order ramps up 1, 2, ... at the start.

    x (n,...) at sigmas[0] -> x (n,...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().double().numpy()
    ds = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=True))
    return x
