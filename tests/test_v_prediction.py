"""v-prediction: our denoiser's x_0 against diffusers' schedulers on the same model output, and
every sampler family giving the same samples from a v model as from the eps model it equals."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from tiny_families import tiny_family_model

from pww_ldm.models.latent_diffusion import schedule_tensors
from pww_ldm.samplers.denoiser import CFGEpsModel, KDenoiser
from pww_ldm.samplers.options import SamplingOptions
from pww_ldm.samplers.run import sample_latents
from pww_ldm.samplers.schedules import DiscreteSchedule

ALPHAS = schedule_tensors("linear", 1000, 0.00085, 0.012)["alphas_cumprod"]
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="v_prediction")


class FixedOutput:
    """A model whose UNet returns `out` whatever it is given."""

    alphas_cumprod = ALPHAS

    def __init__(self, out: torch.Tensor, parameterization: str) -> None:
        self.out, self.parameterization = out, parameterization

    def apply_model(self, x, t, context):
        return self.out.expand_as(x)


class GaussianData:
    """The exact denoiser of data x_0 ~ N(mu, c^2) per element, predicting eps or v.

    With x_t = a x_0 + s eps (a = 1/sqrt(1 + sigma^2), s = sigma a): E[eps | x_t] =
    s (x_t - a mu) / (a^2 c^2 + s^2), E[x_0 | x_t] = mu + a c^2 (x_t - a mu) / (a^2 c^2 + s^2),
    and v = a eps - s x_0 (linear, so its expectation too).
    """

    alphas_cumprod = ALPHAS

    def __init__(self, parameterization: str, mu: float = 0.7, c: float = 0.4) -> None:
        self.parameterization, self.mu, self.c = parameterization, mu, c

    def apply_model(self, x, t, context):
        sigma = context.sigma.double().view(-1, 1, 1, 1)
        a = (1 + sigma**2).rsqrt()
        s = sigma * a
        x = x.double()
        denom = a**2 * self.c**2 + s**2
        eps = s * (x - a * self.mu) / denom
        x0 = self.mu + a * self.c**2 * (x - a * self.mu) / denom
        return (eps if self.parameterization == "eps" else a * eps - s * x0).float()


def _k_x0(v: torch.Tensor, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
    denoiser = KDenoiser(CFGEpsModel(FixedOutput(v, "v")), DiscreteSchedule(ALPHAS))
    x_sigma = x_t * (1 + sigma**2) ** 0.5  # k-diffusion's x = x_t / sqrt(abar)
    return denoiser(x_sigma, torch.tensor([sigma]), cond=torch.zeros(1, 77, 8))


@pytest.mark.parametrize("step", [0, 4, 9])
def test_x0_of_v_matches_diffusers_ddim(step):
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **SCHEDULER)
    scheduler.set_timesteps(10)
    t = int(scheduler.timesteps[step])
    g = torch.Generator().manual_seed(step)
    v, x_t = torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    theirs = scheduler.step(v, t, x_t).pred_original_sample
    abar = ALPHAS[t].double()
    ours = _k_x0(v, x_t, ((1 - abar) / abar).sqrt().item())
    assert (ours - theirs).abs().max().item() < 1e-4


def test_x0_of_v_matches_diffusers_euler():
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    scheduler.set_timesteps(8)
    g = torch.Generator().manual_seed(1)
    for i in (0, 3, 7):
        v, x = torch.randn(1, 4, 5, 7, generator=g), torch.randn(1, 4, 5, 7, generator=g)
        sigma = float(scheduler.sigmas[i])
        theirs = scheduler.step(v, scheduler.timesteps[i], x * (sigma**2 + 1) ** 0.5).pred_original_sample
        scheduler._step_index = None  # each call stands alone
        assert (_k_x0(v, x, sigma) - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "Heun", "LMS", "DPM++ 2M Karras",
                                     "DPM++ SDE", "DDIM", "PLMS"])
def test_every_sampler_family_samples_v_as_eps(sampler):
    options = SamplingOptions(sampler=sampler, steps=12, guidance_scale=3.0)
    runs = {}
    for param in ("eps", "v"):
        runs[param] = sample_latents(GaussianData(param), options, cond=torch.zeros(1, 77, 8),
                                     uncond=torch.zeros(1, 77, 8), shape=(4, 6, 6), seeds=[5, 6],
                                     disable_progress=True)
    assert (runs["v"] - runs["eps"]).abs().max().item() < 1e-3
    # the exact denoiser brings the samples to the target distribution's neighbourhood
    assert abs(runs["eps"].mean().item() - 0.7) < 0.2


def test_a1111_v_test_on_the_unet_output():
    from pww_ldm.loading import looks_like_v_prediction

    model = tiny_family_model("sd2")
    out = model.model.diffusion_model.out[-1]
    with torch.no_grad():
        out.weight.zero_()
        out.bias.fill_(-2.0)  # mean(out - x) = -2.5: a v model's answer at t = 999
        assert looks_like_v_prediction(model)
        out.bias.fill_(0.3)  # mean(out - x) = -0.2: an eps model's
        assert not looks_like_v_prediction(model)
