"""`sample_latents`, the guided denoiser, seeds, img2img, the name registry and input errors,
driven through a fake LatentDiffusion whose eps is exact for Gaussian data (CPU, tiny)."""

from __future__ import annotations

import math

import pytest
import torch

import pww_ldm.samplers as S
from pww_ldm.conditioning import UNetContext

SHAPE = (4, 3, 2)


class FakeLDM(torch.nn.Module):
    """eps of N(mu_row, 0.8^2) data, mu_row = mean of the row's text embedding; records calls."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones((), dtype=dtype))  # gives the model its dtype
        self.register_buffer("alphas_cumprod", S.sd_v1_alphas_cumprod())
        self.schedule = S.DiscreteSchedule(self.alphas_cumprod.double())
        self.calls: list[dict] = []

    def apply_model(self, x_t, t, ctx):
        assert isinstance(ctx, UNetContext)
        self.calls.append({"n": x_t.shape[0], "dtype": x_t.dtype, "ctx": ctx, "t": t})
        sigma = self.schedule.t_to_sigma(t.double())  # the t the sampler gave, back to sigma
        # ... must agree with the sigma handed to the region attention
        torch.testing.assert_close(sigma, ctx.sigma.double(), rtol=1e-4, atol=1e-6)
        sg = sigma.view(-1, 1, 1, 1)
        mu = ctx.embeddings.double().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        x = x_t.double() * (1 + sg**2) ** 0.5
        denoised = (0.64 * x + sg**2 * mu) / (0.64 + sg**2)
        return ((x - denoised) / sg).to(x_t.dtype) * self.weight


def _cond(n, value=0.3):
    return torch.full((n, 5, 6), value)


def _run(model=None, **kw):
    args = dict(sampler="euler_a", steps=6, cond=_cond(1), uncond=_cond(1, -0.2),
                guidance_scale=3.0, shape=SHAPE, seeds=[11], disable_progress=True)  # fmt: skip
    args.update(kw)
    options = S.SamplingOptions(**{k: args.pop(k) for k in S.SAMPLING_FIELDS if k in args})
    if "initial_noise" in args:  # replaces the seeded starting noise
        noise = args.pop("initial_noise")
        args["noise_transform"] = lambda _: noise
    return S.sample_latents(FakeLDM() if model is None else model, options, **args)


# ---------------------------------------------------------------- guidance and context


def test_cfg_is_one_unet_call_on_uncond_cond_batch():
    model, plugins = FakeLDM(), (object(),)
    x = torch.randn(3, *SHAPE)
    sigma = torch.full((3,), 2.5)
    cond, uncond = _cond(3, 0.4), _cond(1, -0.1)
    den = S.KDenoiser(S.CFGEpsModel(model), S.DiscreteSchedule(model.alphas_cumprod))
    out = den(x, sigma, cond=cond, uncond=uncond, guidance_scale=7.5, plugins=plugins)
    assert len(model.calls) == 1
    call = model.calls[0]
    assert call["n"] == 6 and call["ctx"].plugins == plugins
    assert call["ctx"].cond_rows == slice(3, 6)
    assert torch.equal(call["ctx"].sigma, torch.cat([sigma, sigma]))
    assert torch.equal(call["ctx"].embeddings, torch.cat([uncond.expand(3, -1, -1), cond]))
    # equals uncond + scale * (cond - uncond) of two separate unguided calls
    d_c = den(x, sigma, cond=cond)
    d_u = den(x, sigma, cond=uncond)
    torch.testing.assert_close(out, d_u + 7.5 * (d_c - d_u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, uncond", [(1.0, _cond(1)), (5.0, None)])
def test_no_guidance_runs_only_cond_half(scale, uncond):
    model = FakeLDM()
    _run(model, guidance_scale=scale, uncond=uncond, seeds=[1, 2])
    assert all(c["n"] == 2 and c["ctx"].cond_rows == slice(0, 2) for c in model.calls)


def test_half_precision_model_gets_half_input_and_returns_float32():
    model = FakeLDM(torch.float16)
    out = _run(model, sampler="dpmpp_2m")
    assert {c["dtype"] for c in model.calls} == {torch.float16}
    assert {c["ctx"].embeddings.dtype for c in model.calls} == {torch.float16}
    assert out.dtype == torch.float32 and out.shape == (1, *SHAPE) and out.isfinite().all()


def test_ddim_hands_sigma_of_timestep_to_context():
    model = FakeLDM()
    _run(model, sampler="DDIM", steps=5)
    ts = [c["t"][0].item() for c in model.calls]
    assert ts == [801, 601, 401, 201, 1]
    abar = model.alphas_cumprod.double()[torch.tensor(ts).long()]
    sig = [c["ctx"].sigma[0].item() for c in model.calls]
    assert sig == pytest.approx(((1 - abar) / abar).sqrt().tolist(), rel=1e-6)


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize("sampler", ["euler_a", "DPM++ 2M SDE", "dpmpp_sde_karras", "ddim"])
def test_batch_equals_single_runs_and_seed_repeats(sampler):
    kw = {"eta": 1.0} if sampler == "ddim" else {}
    batch = _run(sampler=sampler, seeds=[7, 8, 9], **kw)
    assert torch.equal(batch, _run(sampler=sampler, seeds=[7, 8, 9], **kw))
    singles = torch.cat([_run(sampler=sampler, seeds=[s], **kw) for s in (7, 8, 9)])
    torch.testing.assert_close(batch, singles, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_initial_noise_is_seeded_and_replaceable():
    noise = S.initial_noise([5, 6], SHAPE)
    assert torch.equal(noise[1:], S.initial_noise([6], SHAPE))
    same = _run(seeds=[5, 6], initial_noise=noise.clone())
    assert torch.equal(same, _run(seeds=[5, 6]))  # ancestral noise unchanged by initial_noise
    seen = []
    _run(seeds=[5, 6], initial_noise=2 * noise, callback=seen.append)
    torch.testing.assert_close(seen[0]["x"], 2 * noise * seen[0]["sigma"])


# ---------------------------------------------------------------- img2img


def test_img2img_k_sampler_noises_init_to_kept_sigmas():
    model, init, noise, seen = FakeLDM(), torch.randn(1, *SHAPE), torch.randn(1, *SHAPE), []
    _run(model, sampler="Euler", steps=10, init_latent=init, strength=0.55, initial_noise=noise,
         callback=seen.append)  # fmt: skip
    full = S.DiscreteSchedule(model.alphas_cumprod).get_sigmas(10)
    assert [d["sigma"].item() for d in seen] == pytest.approx(full[-6:-1].tolist())
    torch.testing.assert_close(seen[0]["x"], init + noise * full[-6])


def test_img2img_ddim_runs_lowest_timesteps():
    model, init, noise, seen = FakeLDM(), torch.randn(1, *SHAPE), torch.randn(1, *SHAPE), []
    _run(model, sampler="PLMS", steps=10, init_latent=init, strength=0.3, initial_noise=noise,
         callback=seen.append)  # fmt: skip
    assert [d["t"] for d in seen] == [201, 101, 1]
    abar = model.alphas_cumprod[201].double().item()
    torch.testing.assert_close(seen[0]["x"], math.sqrt(abar) * init + math.sqrt(1 - abar) * noise)


def test_img2img_full_strength_and_tiny_strength():
    init = torch.zeros(2, *SHAPE)
    for sampler in ("euler_a", "ddim"):
        out = _run(sampler=sampler, seeds=[1, 2], init_latent=init, strength=1.0)
        assert out.isfinite().all()
        seen = []
        _run(sampler=sampler, init_latent=init[:1], strength=0.01, callback=seen.append)
        assert len(seen) == 1  # at least one step


# ---------------------------------------------------------------- registry


def test_every_registered_sampler_runs():
    for spec in S.SAMPLERS:
        out = _run(sampler=spec.label, steps=3, seeds=[0, 1])
        assert out.shape == (2, *SHAPE) and out.dtype == torch.float32 and out.isfinite().all()


def test_names_accept_both_spellings_case_insensitively():
    snake = ["euler_a", "euler", "lms", "heun", "dpm_2", "dpm_2_a", "dpmpp_2s_a", "dpmpp_2m",
             "dpmpp_sde", "dpmpp_2m_sde"]  # fmt: skip
    a1111 = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M",
             "DPM++ SDE", "DPM++ 2M SDE"]  # fmt: skip
    for s, a in zip(snake, a1111, strict=True):
        assert S.get_sampler(s) is S.get_sampler(a) is S.get_sampler(f"  {a.upper()} ")
        assert S.get_sampler(s + "_karras") is S.get_sampler(a + " Karras")
        assert S.get_sampler(s + "_KARRAS").schedule == "karras"
        assert S.get_sampler(s).schedule == "default" and S.get_sampler(s).family == "k"
    assert S.get_sampler("ddim").family == "ddim" and S.get_sampler("PLMS").family == "plms"
    assert S.get_sampler("euler_ancestral") is S.get_sampler("Euler a")
    assert S.get_sampler("DPM++ SDE").noise == "brownian"


def test_karras_variant_uses_karras_sigmas():
    model, seen = FakeLDM(), []
    _run(model, sampler="DPM++ 2M Karras", steps=5, callback=seen.append)
    sched = S.DiscreteSchedule(model.alphas_cumprod)
    expect = S.get_sigmas_karras(5, sched.sigma_min.item(), sched.sigma_max.item())
    assert [d["sigma"].item() for d in seen] == pytest.approx(expect[:-1].tolist())


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(S.UnknownSamplerError) as err:
        S.get_sampler("euler b")
    assert isinstance(err.value, ValueError)
    assert "'euler b'" in str(err.value) and "DPM++ 2M Karras" in str(err.value)
    assert "dpmpp_2m_karras" in str(err.value)
    with pytest.raises(S.UnknownSamplerError):
        _run(sampler="k_lms")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw, error, words",
    [
        ({"steps": 0}, S.InvalidStepsError, "steps"),
        ({"steps": 2.5}, S.InvalidStepsError, "integer"),
        ({"sampler": "ddim", "steps": 1001}, S.InvalidStepsError, "1000"),
        ({"strength": 0.5}, S.InvalidStrengthError, "init_latent"),
        ({"init_latent": torch.zeros(1, *SHAPE)}, S.InvalidStrengthError, "strength"),
        ({"init_latent": torch.zeros(1, *SHAPE), "strength": 0.0}, S.InvalidStrengthError, "(0, 1]"),
        ({"init_latent": torch.zeros(1, *SHAPE), "strength": 1.5}, S.InvalidStrengthError, "(0, 1]"),
        ({"init_latent": torch.zeros(2, *SHAPE), "strength": 0.5}, S.SamplerInputError, "shape"),
        ({"initial_noise": torch.zeros(1, 4, 2, 2)}, S.SamplerInputError, "shape"),
        ({"seeds": []}, S.SamplerInputError, "seed"),
        ({"seeds": [1.5]}, S.SamplerInputError, "seed"),
        ({"cond": _cond(3), "seeds": [1, 2]}, S.SamplerInputError, "rows"),
        ({"sampler": "plms", "eta": 0.5}, S.SamplerInputError, "eta"),
        ({"sampler_options": {"s_churnn": 1.0}}, S.SamplerInputError, "s_churnn"),
        ({"shape": (4, 0, 2)}, S.SamplerInputError, "shape"),
    ],
)
def test_bad_input_raises_clear_errors(kw, error, words):
    with pytest.raises(error) as err:
        _run(**kw)
    assert isinstance(err.value, ValueError) and words in str(err.value)


def test_progress_bar_can_be_silenced(capsys):
    _run(disable_progress=True)
    assert capsys.readouterr().err == ""
    S.sample_euler(lambda x, s: x * 0, torch.ones(1, 2), torch.tensor([1.0, 0.5, 0.0]), disable=False)
    assert "2/2" in capsys.readouterr().err
