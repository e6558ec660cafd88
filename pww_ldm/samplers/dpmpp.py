"""k-diffusion's DPM-Solver++ samplers (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models"), in the data-prediction form over D(x, sigma).

Same signature and conventions as `k_samplers.py`: x (n, ...) at sigmas[0] -> x at sigmas[-1],
sigmas (m + 1,) descending; noise only through `noise_sampler(sigma, sigma_next)`. Time variable
t = -log(sigma) (half log-SNR for the VE form). Formulas and order of operations are
k-diffusion's v0.1 `sample_dpmpp_*`.

Noise of the SDE samplers: k-diffusion's default for `dpmpp_sde` / `dpmpp_2m_sde` is a torchsde
Brownian tree. We have no torchsde; our default (`noise.BrownianNoiseSampler`, also what
`run.sample_latents` passes, seeded per image) samples the same Brownian motion by Brownian
bridges, so increments over nested intervals are correlated exactly as in a tree (the numbers
differ from torchsde's, the distribution does not). Any `noise_sampler(sigma, sigma_next)` that
returns unit-variance noise may be passed instead, e.g. independent Gaussian draws
(`noise.BatchedNoiseSampler`) as ComfyUI / A1111 allow: for `dpmpp_2m_sde`, whose intervals never
overlap, that has the same law; for `dpmpp_sde` it drops the correlation between the two noises
of a step, and the sampler's output variance then converges only at first order.
"""

from __future__ import annotations

import torch
from tqdm.auto import trange

from .k_samplers import (
    Callback,
    Denoiser,
    NoiseSampler,
    _report,
    default_noise_sampler,
    get_ancestral_step,
    to_d,
)
from .noise import default_brownian_noise_sampler


def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver++(2S) single-step 2nd-order steps (Lu et al. 2022).

    x (n, ...) at sigmas[0] -> x (n, ...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)  # Euler to sigma = 0, where log sigma is -inf
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, r: float = 1 / 2,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic), 2 model calls per step with ancestral noise at the
    intermediate point r and at the end (Lu et al. 2022; k-diffusion "DPM++ SDE").

    x (n, ...) at sigmas[0] -> x (n, ...) at sigmas[-1]; sigmas (m + 1,). noise_sampler should
    be Brownian (default: `BrownianNoiseSampler` with random seeds); see the module docstring.
    """
    noise_sampler = default_brownian_noise_sampler(x) if noise_sampler is None else noise_sampler
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            dt = sigmas[i + 1] - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            # Step 1: ancestral step to the intermediate sigma_fn(s)
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
            s_ = _t_fn(sd)
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
            # Step 2: the full step with the linear combination of both denoised estimates
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
            t_next_ = _t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): deterministic 2nd-order multistep (Lu et al. 2022, Algorithm 2).

    x (n, ...) at sigmas[0] -> x (n, ...) at sigmas[-1]; sigmas (m + 1,).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022), `solver_type` "midpoint" or "heun".

    x (n, ...) at sigmas[0] -> x (n, ...) at sigmas[-1]; sigmas (m + 1,). eta = 0 gives the
    deterministic 2M ODE solver with the chosen 2nd-order correction. Noise: `noise_sampler`
    (default: `BrownianNoiseSampler` with random seeds; independent draws have the same law).
    """
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    noise_sampler = default_brownian_noise_sampler(x) if noise_sampler is None else noise_sampler
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    h_last = None
    h = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # last step: the model's clean estimate
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = (
                sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x
                + (-h - eta_h).expm1().neg() * denoised
            )
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    coeff = (-h - eta_h).expm1().neg() / (-h - eta_h) + 1
                    x = x + coeff * (1 / r) * (denoised - old_denoised)
                elif solver_type == "midpoint":
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + (
                    noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                    * (-2 * eta_h).expm1().neg().sqrt() * s_noise
                )
        old_denoised = denoised
        h_last = h
    return x
