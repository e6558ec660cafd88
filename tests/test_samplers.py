"""Sampler numerics against closed-form answers and k-diffusion transcriptions (float64, CPU).

Data distribution N(mu, s^2) per element: the exact denoiser is
D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the probability-flow ODE
dx/dsigma = (x - D) / sigma has the solution x(sigma) = mu + (x0 - mu) sqrt(s^2 + sigma^2) /
sqrt(s^2 + sigma_0^2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pww_ldm.samplers as S

MU, S_DATA = 0.5, 0.8
F64 = torch.float64


def gauss_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (S_DATA**2 * x + sg**2 * MU) / (S_DATA**2 + sg**2)


def exact_flow(x0: torch.Tensor, sigma0: float, sigma1: float) -> torch.Tensor:
    return MU + (x0 - MU) * math.sqrt((S_DATA**2 + sigma1**2) / (S_DATA**2 + sigma0**2))


def gauss_eps(x_t: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
    """Exact eps of N(MU, S_DATA^2) data for a DDPM-scale x_t at noise level sigma."""
    sg = sigma.view(-1, *([1] * (x_t.ndim - 1)))
    x_sigma = x_t * (1 + sg**2) ** 0.5
    return (x_sigma - gauss_denoiser(x_sigma, sigma)) / sg


X0 = torch.tensor([[-30.0], [0.0], [25.0], [100.0]], dtype=F64)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sd_v1_sigma_range(dtype):
    sched = S.DiscreteSchedule(S.sd_v1_alphas_cumprod(dtype=dtype))
    assert abs(sched.sigma_min.item() - 0.0292) < 1e-4
    assert abs(sched.sigma_max.item() - 14.6146) < 1e-4
    sig = sched.get_sigmas(10)
    assert sig.shape == (11,) and sig[-1] == 0
    assert torch.allclose(sig[[0, -2]], torch.stack([sched.sigma_max, sched.sigma_min]))
    assert (sig[:-1].diff() < 0).all()


def test_default_spacing_is_log_sigma_interpolation():
    sched = S.DiscreteSchedule(S.sd_v1_alphas_cumprod(dtype=F64))
    n = 7
    t = np.linspace(999, 0, n)
    log_s = np.log(sched.sigmas.numpy())
    lo, hi = np.floor(t).astype(int), np.ceil(t).astype(int)
    expect = np.exp((1 - (t - lo)) * log_s[lo] + (t - lo) * log_s[hi])
    np.testing.assert_allclose(sched.get_sigmas(n)[:-1].numpy(), expect, rtol=1e-12)


def test_sigma_to_t_and_back():
    sched = S.DiscreteSchedule(S.sd_v1_alphas_cumprod(dtype=F64))
    t = torch.tensor([0.0, 1.0, 20.0, 500.5, 998.25, 999.0], dtype=F64)
    assert torch.allclose(sched.sigma_to_t(sched.t_to_sigma(t)), t, atol=1e-9)
    assert sched.sigma_to_t(sched.sigmas[[3, 981]]).tolist() == pytest.approx([3, 981])
    q = sched.sigma_to_t(sched.t_to_sigma(torch.tensor([10.4, 10.6], dtype=F64)), quantize=True)
    assert q.tolist() == [10, 11]
    # outside the trained range t clamps to the ends
    assert sched.sigma_to_t(torch.tensor([1e-4, 100.0], dtype=F64)).tolist() == [0.0, 999.0]


def test_karras_and_exponential_schedules():
    k = S.get_sigmas_karras(6, 0.03, 14.6, rho=7.0, dtype=F64)
    assert k.shape == (7,) and k[-1] == 0
    assert k[0].item() == pytest.approx(14.6) and k[-2].item() == pytest.approx(0.03)
    assert torch.allclose((k[:-1] ** (1 / 7)).diff(), (k[1:-1] ** (1 / 7) - k[:-2] ** (1 / 7)))
    assert torch.allclose((k[:-1] ** (1 / 7)).diff().std(), torch.zeros((), dtype=F64), atol=1e-12)
    e = S.get_sigmas_exponential(5, 0.03, 14.6, dtype=F64)
    assert e[0].item() == pytest.approx(14.6) and e[-2].item() == pytest.approx(0.03)
    assert e[:-1].log().diff().std().item() < 1e-12


# ---------------------------------------------------------------- ODE samplers: order


def _errors(fn, ns, **kw):
    errs = []
    for n in ns:
        sig = S.get_sigmas_karras(n, 0.1, 10.0, dtype=F64)[:-1]  # end at sigma_min, not 0
        out = fn(gauss_denoiser, X0.clone(), sig, disable=True, **kw)
        errs.append((out - exact_flow(X0, sig[0].item(), sig[-1].item())).abs().max().item())
    return errs


@pytest.mark.parametrize(
    "fn, kw, order",
    [
        (S.sample_euler, {}, 1),
        (S.sample_heun, {}, 2),
        (S.sample_dpm_2, {}, 2),
        (S.sample_dpmpp_2m, {}, 2),
        (S.sample_dpmpp_2m_sde, {"eta": 0.0}, 2),
        (S.sample_dpmpp_2m_sde, {"eta": 0.0, "solver_type": "heun"}, 2),
    ],
)
def test_ode_sampler_converges_at_its_order(fn, kw, order):
    errs = _errors(fn, [16, 32, 64], **kw)
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert abs(rates[-1] - order) < 0.25, (errs, rates)
    assert errs[-1] < 0.2 * 10.0 ** (1 - order)


def test_lms_converges_faster_than_second_order():
    # k-diffusion's LMS warms up with orders 1, 2, 3 before AB4, so its asymptotic global order
    # is 2; in the step range of practice the 4th-order steps dominate (error ratio ~12 / step
    # doubling here); the coefficients themselves are checked to be 4th order below.
    errs = _errors(S.sample_lms, [16, 32, 64])
    assert errs[0] / errs[1] > 8 and errs[1] / errs[2] > 8, errs
    assert errs[-1] < _errors(S.sample_heun, [64])[0] / 5


def test_lms_coefficients_integrate_cubics_exactly():
    t = np.array([14.6, 9.0, 5.5, 3.1, 1.7, 0.9])
    rng = np.random.default_rng(0)
    for i in range(3, 5):
        p = np.polynomial.Polynomial(rng.normal(size=4))
        coeffs = [S.linear_multistep_coeff(4, t, i, j) for j in range(4)]
        approx = sum(c * p(t[i - j]) for j, c in enumerate(coeffs))
        exact = p.integ()(t[i + 1]) - p.integ()(t[i])
        assert approx == pytest.approx(exact, rel=1e-12)


def _ddim_error(fn, steps):
    abar = S.sd_v1_alphas_cumprod(dtype=F64)
    ts = S.make_ddim_timesteps(steps)
    a_t, a_0 = abar[ts[-1]].item(), abar[0].item()
    s_t, s_0 = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_0) / a_0)
    out = fn(gauss_eps, X0 * math.sqrt(a_t), ts, abar, disable=True)
    return (out / math.sqrt(a_0) - exact_flow(X0, s_t, s_0)).abs().max().item()


def test_ddim_converges_first_order_and_plms_faster():
    ddim = [_ddim_error(S.sample_ddim, n) for n in (10, 20, 40)]
    plms = [_ddim_error(S.sample_plms, n) for n in (10, 20, 40)]
    assert 1.7 < ddim[1] / ddim[2] < 2.3, ddim
    assert plms[1] / plms[2] > 3.5 and plms[2] < ddim[2] / 10, plms


def test_ddim_eta0_equals_euler_on_ddim_sigmas():
    abar = S.sd_v1_alphas_cumprod(dtype=F64)
    sched = S.DiscreteSchedule(abar)
    ts = S.make_ddim_timesteps(25)

    class Model(torch.nn.Module):  # a nonlinear eps model of (x_t, t)
        alphas_cumprod = abar

        def apply_model(self, x, t, ctx):
            return torch.tanh(x + t.view(-1, 1, 1, 1) / 400) * ctx.embeddings.mean()

    eps = S.CFGEpsModel(Model())
    cond = torch.full((1, 3, 2), 0.7, dtype=F64)
    x_t = torch.randn(2, 4, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    ddim = S.sample_ddim(eps, x_t, ts, abar, extra_args={"cond": cond}, disable=True)
    sig = S.ddim_sigmas(abar, ts)
    x_k = x_t * (1 + sig[0] ** 2) ** 0.5
    euler = S.sample_euler(S.KDenoiser(eps, sched), x_k, sig, {"cond": cond}, disable=True)
    torch.testing.assert_close(ddim / abar[0].sqrt(), euler, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- stochastic samplers


N_SAMPLES = 20000


@pytest.mark.parametrize(
    "fn, steps, kw",
    [
        (S.sample_euler_ancestral, 320, {}),  # 1st order in distribution: more steps
        (S.sample_euler, 320, {"s_churn": 20.0}),
        (S.sample_dpm_2_ancestral, 40, {}),
        (S.sample_heun, 40, {"s_churn": 10.0}),
        (S.sample_dpmpp_2s_ancestral, 40, {}),
        (S.sample_dpmpp_sde, 40, {}),
        (S.sample_dpmpp_2m_sde, 40, {}),
        (S.sample_dpmpp_2m_sde, 40, {"solver_type": "heun"}),
    ],
)
def test_stochastic_sampler_mean_and_variance(fn, steps, kw):
    g = torch.Generator().manual_seed(1)
    sig = S.get_sigmas_karras(steps, 0.03, 14.6, dtype=F64)
    # one "image" of N_SAMPLES scalars, its own generator, as in the pipeline
    x = MU + torch.randn(1, N_SAMPLES, generator=g, dtype=F64) * math.sqrt(S_DATA**2 + 14.6**2)
    cls = S.BrownianNoiseSampler if fn is S.sample_dpmpp_sde else S.BatchedNoiseSampler
    ns = cls([g], (N_SAMPLES,), None, F64)
    out = fn(gauss_denoiser, x, sig, disable=True, noise_sampler=ns, **kw)
    assert abs(out.mean().item() - MU) < 0.03  # 5 standard errors
    assert abs(out.std().item() / S_DATA - 1) < 0.04  # ~4 s.e. + discretisation


def test_ddim_eta1_mean_and_variance():
    abar = S.sd_v1_alphas_cumprod(dtype=F64)
    ts = S.make_ddim_timesteps(500)  # eta = 1 is 1st order in distribution: many steps
    a_t, a_0 = abar[ts[-1]].item(), abar[0].item()
    g = torch.Generator().manual_seed(2)
    x = math.sqrt(a_t) * MU + torch.randn(1, N_SAMPLES, generator=g, dtype=F64) * math.sqrt(
        a_t * S_DATA**2 + 1 - a_t
    )
    ns = S.BatchedNoiseSampler([g], (N_SAMPLES,), None, F64)
    out = S.sample_ddim(gauss_eps, x, ts, abar, disable=True, eta=1.0, noise_sampler=ns)
    assert abs(out.mean().item() - math.sqrt(a_0) * MU) < 0.03
    assert abs(out.std().item() / math.sqrt(a_0 * S_DATA**2 + 1 - a_0) - 1) < 0.04


def test_brownian_noise_sampler_nested_intervals():
    g = torch.Generator().manual_seed(3)
    ns = S.BrownianNoiseSampler([g], (N_SAMPLES,), None, F64)
    z1, z2 = ns(4.0, 3.0)[0], ns(4.0, 1.0)[0]  # [3, 4] inside [1, 4]
    z3 = ns(1.0, 0.5)[0]  # disjoint
    for z in (z1, z2, z3):
        assert abs(z.std().item() - 1) < 0.03
    assert abs(torch.corrcoef(torch.stack([z1, z2]))[0, 1].item() - math.sqrt(1 / 3)) < 0.03
    assert abs(torch.corrcoef(torch.stack([z2, z3]))[0, 1].item()) < 0.03


# ---------------------------------------------------------------- k-diffusion transcriptions


def _nonlinear_denoiser(x, sigma, **_):
    sg = sigma.view(-1, 1, 1, 1)
    return torch.tanh(x / (1 + sg)) * 0.9 + 0.1 * sg.sqrt()


def _replay(noises):
    it = iter(noises)
    return lambda sigma, sigma_next: next(it)


def _kd_get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    # k-diffusion v0.1 get_ancestral_step, written out independently
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _kd_euler_ancestral(model, x, sigmas, noises, eta=1.0, s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    k = 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _kd_get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = (x - denoised) / sigmas[i]
        dt = sigma_down - sigmas[i]
        x = x + d * dt
        if sigmas[i + 1] > 0:
            x = x + noises[k] * s_noise * sigma_up
            k += 1
    return x


def _kd_dpmpp_2m_sde(model, x, sigmas, noises, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last, k = None, None, 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)  # noqa: E501
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noises[k] * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
                k += 1
        old_denoised, h_last = denoised, h
    return x


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("eta", [1.0, 0.6])
def test_euler_ancestral_matches_kdiffusion_step_for_step(dtype, eta):
    g = torch.Generator().manual_seed(4)
    sched = S.DiscreteSchedule(S.sd_v1_alphas_cumprod(dtype=dtype))
    sigmas = sched.get_sigmas(12)
    x = torch.randn(2, 4, 3, 5, generator=g, dtype=dtype) * sigmas[0]
    noises = [torch.randn(2, 4, 3, 5, generator=g, dtype=dtype) for _ in range(12)]
    ours = S.sample_euler_ancestral(_nonlinear_denoiser, x, sigmas, disable=True, eta=eta,
                                    s_noise=0.9, noise_sampler=_replay(noises))  # fmt: skip
    ref = _kd_euler_ancestral(_nonlinear_denoiser, x, sigmas, noises, eta=eta, s_noise=0.9)
    assert torch.equal(ours, ref)  # same operations in the same order: bit-identical


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_sde_matches_kdiffusion_step_for_step(solver_type):
    g = torch.Generator().manual_seed(5)
    sigmas = S.get_sigmas_karras(9, 0.0292, 14.6146)
    x = torch.randn(2, 4, 3, 5, generator=g) * sigmas[0]
    noises = [torch.randn(2, 4, 3, 5, generator=g) for _ in range(9)]
    ours = S.sample_dpmpp_2m_sde(_nonlinear_denoiser, x, sigmas, disable=True,
                                 noise_sampler=_replay(noises), solver_type=solver_type)  # fmt: skip
    ref = _kd_dpmpp_2m_sde(_nonlinear_denoiser, x, sigmas, noises, solver_type=solver_type)
    assert torch.equal(ours, ref)
