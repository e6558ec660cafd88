"""Attention guidance (pww_ldm.region.guidance): the energy by hand, the normalised gradient step,
the sampler's eps bookkeeping, its window, and that it moves a real UNet's attention inward."""

import pytest
import torch
from tiny import painted_map, tiny_model

import pww_ldm
from pww_ldm.conditioning import AttentionCall
from pww_ldm.region.errors import RegionError
from pww_ldm.region.features import FeatureOptions
from pww_ldm.region.guidance import AttentionEnergy, RegionGuidance
from pww_ldm.region.timing import StepClock
from pww_ldm.samplers.denoiser import CFGEpsModel

RED = (255, 0, 0)


def call(grid):
    return AttentionCall("cross", grid, torch.ones(2), slice(0, 2), 1.0)


def test_energy_equals_a_hand_computation():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 4 * 4, 6).softmax(-1)  # (n, heads, N, T) at a 4x4 layer
    mask = torch.zeros(8, 8)
    mask[:4, :4] = 1  # the top-left quarter at image size -> cells (0..1, 0..1) at 4x4
    energy = AttentionEnergy([mask], [[2, 3]])
    energy.observe(probs, call((4, 4)))
    expected = 0.0
    for i in range(2):
        attn = probs[i].mean(0)[:, 2] + probs[i].mean(0)[:, 3]  # (16,) pixels in row-major order
        inside = attn.reshape(4, 4)[:2, :2].sum() / attn.sum()
        expected += float((1 - inside) ** 2) / 2
    assert energy.value().item() == pytest.approx(expected, rel=1e-6)


def test_energy_averages_layers_and_needs_one():
    energy = AttentionEnergy([torch.ones(8, 8)], [[0]])
    with pytest.raises(RegionError, match="no cross-attention"):
        energy.value()
    uniform = torch.full((1, 1, 4, 2), 0.5)
    energy.observe(uniform, call((2, 2)))  # all attention inside the full mask: energy 0
    half = torch.zeros(8, 8)
    half[:, :4] = 1
    other = AttentionEnergy([half], [[0]])
    other.observe(uniform, call((2, 2)))  # half of it inside: (1 - 1/2)^2
    assert energy.value().item() == pytest.approx(0.0, abs=1e-7)
    assert other.value().item() == pytest.approx(0.25, rel=1e-6)


def test_shift_is_the_normalised_gradient_step():
    clock = StepClock(10)
    guide = RegionGuidance([torch.ones(8, 8)], [[0]], clock, strength=0.5, window=0.3)
    x = torch.randn(2, 4, 3, 3)
    target = torch.randn(2, 4, 3, 3)

    def run(leaf, observers):  # an "energy" with a known gradient: |x - target|^2 / 2
        observers[0]._layers.append(((leaf - target) ** 2).sum() / 2)

    noise_std = torch.tensor([0.9, 0.5]).view(2, 1, 1, 1)
    moved = guide.shift(x, noise_std, run)
    grad = x - target
    rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    torch.testing.assert_close(moved, x - 0.5 * noise_std * grad / rms)
    assert not moved.requires_grad
    assert guide.active()
    clock.step = 3  # 3/10 is outside the first 30 %
    assert not guide.active()


@pytest.mark.parametrize("bad", [dict(strength=0.0), dict(strength=1.0, window=0.0),
                                 dict(strength=1.0, iterations=0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(RegionError, match="attention guidance needs"):
        RegionGuidance([torch.ones(2, 2)], [[0]], StepClock(4), **bad)


class _Linear:
    """apply_model = 0.5 x, no attention layers: eps(x) = 0.5 x."""

    def apply_model(self, x, t, context):
        return 0.5 * x


class _Shift:
    def __init__(self, delta, on=True):
        self.delta, self.on = delta, on

    def active(self):
        return self.on

    def shift(self, x_t, noise_std, run):
        return x_t - self.delta


def test_eps_is_the_moved_latents_prediction_seen_from_the_unmoved_one():
    eps_model = CFGEpsModel(_Linear())
    x = torch.randn(1, 4, 2, 2)
    delta = 0.1 * torch.randn(1, 4, 2, 2)
    sigma = torch.tensor([2.0])
    s = 2.0 / 5 ** 0.5  # sigma / sqrt(1 + sigma^2)
    cond = torch.zeros(1, 3, 8)
    eps = eps_model(x, torch.tensor([500.0]), sigma, cond=cond, guide=_Shift(delta))
    # x_0 estimates (x - s eps) / alpha agree: the unmoved state's equals the moved latent's
    torch.testing.assert_close(x - s * eps, (x - delta) - s * 0.5 * (x - delta))
    off = eps_model(x, torch.tensor([500.0]), sigma, cond=cond, guide=_Shift(delta, on=False))
    assert torch.equal(off, eps_model(x, torch.tensor([500.0]), sigma, cond=cond))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def _paint(model, **features):
    cmap = painted_map(64, 64, (RED, slice(0, 24), slice(0, 24)))
    return pww_ldm.paint_with_words(model, "a red circle", cmap, {RED: "red circle,1.0"},
                                    weight_function="std", weight_scale=4.0, steps=4, seed=5,
                                    sampler="euler", progress=False,
                                    features=FeatureOptions(**features))


def test_guidance_lowers_the_energy_and_changes_only_the_guided_steps(model, monkeypatch):
    import pww_ldm.pipeline as pipeline

    guides = []
    build = pipeline.build_features

    def keep(*args, **kwargs):
        built = build(*args, **kwargs)
        guides.append(built.guide)
        return built

    monkeypatch.setattr(pipeline, "build_features", keep)
    plain = _paint(model)
    guided = _paint(model, guidance=0.05, guidance_window=0.5, guidance_iterations=3)
    assert guides[0] is None  # guidance off: no guide, plain Paint-with-Words
    energies = guides[1].energies
    assert len(energies) == 2 * 3  # steps 0 and 1 of 4 are in the window, 3 iterations each
    assert energies[1] < energies[0] and energies[2] < energies[1]
    assert plain[0].tobytes() != guided[0].tobytes()
    assert "PwW guidance: 0.05" in guided[0].info["parameters"]
