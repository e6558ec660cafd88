"""The LCM sampler against its published update rule on Gaussian data, where D is closed-form.

Data x_0 ~ N(MU, S^2) per pixel: the ideal denoiser is D(x, sigma) = (S^2 x + sigma^2 MU) /
(S^2 + sigma^2) (the posterior mean), so the LCM steps x <- D(x, sigma_i) + sigma_{i+1} z have a
closed-form mean and variance, and A1111's LCM denoiser (`LCMDenoiser`) closed-form outputs.
"""

import pytest
import torch

import pww_ldm.samplers as S
from pww_ldm.samplers.lcm import LCMDenoiser, sample_lcm

MU, S2 = 0.3, 0.64  # data mean and variance


def gaussian_denoiser(x, sigma, **_):
    """The ideal D(x, sigma) for N(MU, S2) data; x (n, ...), sigma (n,)."""
    sg2 = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) ** 2
    return (S2 * x + sg2 * MU) / (S2 + sg2)


class GaussianLDM(torch.nn.Module):
    """An LDM stand-in whose eps is exact for N(MU, S2) data; records the timesteps it sees."""

    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", S.sd_v1_alphas_cumprod())
        self.schedule = S.DiscreteSchedule(self.alphas_cumprod.double())
        self.ts = []

    def apply_model(self, x_t, t, ctx, **_):
        self.ts.append(t.clone())
        sigma = self.schedule.t_to_sigma(t.double()).view(-1, 1, 1, 1)
        x = x_t.double() * (1 + sigma**2) ** 0.5
        return ((x - gaussian_denoiser(x, sigma.flatten())) / sigma).to(x_t.dtype)


def test_one_step_per_sigma_denoise_then_fresh_noise():
    sigmas = torch.tensor([14.6, 3.0, 0.7, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * sigmas[0]
    noises = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    drawn, seen = iter(noises), []
    out = sample_lcm(gaussian_denoiser, x0, sigmas, noise_sampler=lambda s, sn: next(drawn),
                     callback=seen.append, disable=True)
    # Luo et al. 2023, Algorithm 1, written out: x_0 estimate, then noise to the next sigma.
    x = gaussian_denoiser(x0, sigmas[0].expand(2))
    x = gaussian_denoiser(x + 3.0 * noises[0], sigmas[1].expand(2))
    x = gaussian_denoiser(x + 0.7 * noises[1], sigmas[2].expand(2))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    assert [c["i"] for c in seen] == [0, 1, 2] and [float(c["sigma"]) for c in seen] == [14.6, 3.0, 0.7]


def test_sample_statistics_follow_the_closed_form():
    # mean m and variance v of x through the steps: D scales x by a = S2 / (S2 + sigma^2) and
    # moves the mean towards MU; the fresh noise adds sigma_next^2 of variance.
    sigmas = torch.tensor([14.6, 4.0, 1.0, 0.25, 0.0], dtype=torch.float64)
    m, v = 0.0, sigmas[0].item() ** 2
    for sigma, nxt in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        a = S2 / (S2 + sigma**2)
        m, v = a * m + (1 - a) * MU, a * a * v + nxt**2
    torch.manual_seed(0)
    x = torch.randn(200_000, 1, dtype=torch.float64) * sigmas[0]
    out = sample_lcm(gaussian_denoiser, x, sigmas, disable=True)
    assert out.mean().item() == pytest.approx(m, abs=4 * (v / 200_000) ** 0.5)
    assert out.var().item() == pytest.approx(v, rel=0.02)


@pytest.mark.parametrize("name", ["LCM", "lcm", "k_lcm"])
def test_lcm_runs_through_sample_latents_by_name(name):
    model, shape, steps = GaussianLDM(), (4, 3, 5), 4
    options = S.SamplingOptions(sampler=name, steps=steps, guidance_scale=1.0)
    out = S.sample_latents(model, options, cond=torch.zeros(1, 77, 8), uncond=None, shape=shape,
                           seeds=[7], disable_progress=True)
    # Expected: A1111's LCM: its denoiser on the 50-step grid and that denoiser's sigmas (both
    # checked against A1111's definitions below); the seed's generator draws the start noise,
    # then one noise per step but the last.
    den = LCMDenoiser(S.CFGEpsModel(model), S.DiscreteSchedule(model.alphas_cumprod))
    sigmas = den.get_sigmas(steps)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, *shape, generator=g) * sigmas[0]
    for i in range(steps):
        x = den(x, sigmas[i].expand(1), cond=torch.zeros(1, 77, 8))
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn(1, *shape, generator=g)
    assert len(model.ts) == 2 * steps  # ours, then the expectation's
    assert sorted(set(int(t) for t in torch.cat(model.ts).tolist())) == [19, 339, 679, 999]
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def _a1111_grid():
    abar = S.sd_v1_alphas_cumprod()
    grid_t = torch.arange(19, 1000, 20)  # A1111: alphas_cumprod[999 - 20 k], k < 50
    return grid_t, ((1 - abar[grid_t]) / abar[grid_t]).sqrt()


def test_lcm_denoiser_sigmas_are_a1111s():
    grid_t, grid_sigmas = _a1111_grid()
    den = LCMDenoiser(None, S.DiscreteSchedule(S.sd_v1_alphas_cumprod()))
    sigmas = den.get_sigmas(4)
    # t = linspace(999, 19, 4) = 999, 672.33, 345.67, 19 -> grid index 49, 32.67, 16.33, 0,
    # interpolated in log sigma between grid points.
    expected = []
    for index in (49.0, 98 / 3, 49 / 3, 0.0):
        lo, w = int(index), index - int(index)
        hi = min(lo + 1, 49)
        expected.append(float(((1 - w) * grid_sigmas[lo].log() + w * grid_sigmas[hi].log()).exp()))
    assert sigmas.tolist() == pytest.approx(expected + [0.0], rel=1e-5)
    # the UNet then sees the nearest grid timestep: index 32.67 -> 33, 16.33 -> 16
    assert den.sigma_to_t(sigmas[:-1]).tolist() == [999, 33 * 20 + 19, 16 * 20 + 19, 19]


def test_lcm_denoiser_snaps_t_and_applies_the_boundary_condition():
    grid_t, grid_sigmas = _a1111_grid()
    calls = []

    def eps_model(x_in, t, sigma, **kwargs):
        calls.append((t, sigma, kwargs))
        return x_in  # eps = c_in x, so c_in shows in the output

    den = LCMDenoiser(eps_model, S.DiscreteSchedule(S.sd_v1_alphas_cumprod()))
    sigma = torch.tensor([grid_sigmas[10].item() * 1.01, grid_sigmas[0].item() * 0.9])
    x = torch.full((2, 1, 2, 2), 2.0)
    out = den(x, sigma, cond="c")
    t, sigma_seen, kwargs = calls[0]
    assert t.tolist() == [grid_t[10].item(), 19] and kwargs == {"cond": "c"}
    torch.testing.assert_close(sigma_seen, torch.stack([grid_sigmas[10], grid_sigmas[0]]))
    for row, t_row in enumerate((float(grid_t[10]), 19.0)):
        st = 10.0 * t_row
        c_skip, c_out = 0.25 / (st**2 + 0.25), st / (st**2 + 0.25) ** 0.5
        sg = sigma[row].item()
        want = c_out * (2.0 - sg * 2.0 / (sg**2 + 1) ** 0.5) + c_skip * 2.0
        assert out[row].flatten().tolist() == pytest.approx([want] * 4, rel=1e-6)
