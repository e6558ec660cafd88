"""The attention plug-in seam: what a layer hands a plug-in, which rows, and the fused fast path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import painted_map, randomize_, tiny_config, tiny_model

import pww_ldm
import pww_ldm.samplers.run as run_module
from pww_ldm.conditioning import AttentionPlugin, UNetContext
from pww_ldm.config import instantiate_from_config
from pww_ldm.models.cross_attention import CrossAttention
from pww_ldm.region import RegionContext, parse_color_context
from pww_ldm.samplers import SamplingOptions


class Probe:
    """A plug-in that records what it is handed and optionally changes the scores."""

    def __init__(self, acts_on="cond", kinds=("cross",), modify=None, observe=False):
        self.acts_on, self.kinds, self.modify, self.observes = acts_on, kinds, modify, observe
        self.scores, self.probs, self.calls = [], [], []

    def hooks(self, kind):
        wanted = kind in self.kinds
        return (wanted and self.modify is not None, wanted and self.observes)

    def modify_scores(self, scores, call):
        self.scores.append(scores.clone())
        self.calls.append(call)
        return self.modify(scores, call)

    def observe(self, probs, call):
        self.probs.append(probs.clone())
        self.calls.append(call)


def layer(context_dim=None, seed=3):
    return randomize_(CrossAttention(32, context_dim=context_dim, heads=2, dim_head=16), seed=seed)


def inputs(rows=4, tokens=77, seed=0, width=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 12, 32, generator=g, dtype=torch.float64)
    emb = torch.randn(rows, tokens, width, generator=g, dtype=torch.float64)
    sigma = torch.linspace(1.0, 4.0, rows, dtype=torch.float64)
    return x, emb, sigma


def hand_attention(module, x, source, bias=None):
    """softmax((q k^T + bias) * scale) v, written out, for an independent reference."""
    q, k, v = (proj(t).view(t.shape[0], t.shape[1], 2, 16).transpose(1, 2)
               for proj, t in ((module.to_q, x), (module.to_k, source), (module.to_v, source)))
    scores = q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    probs = (scores * module.scale).softmax(-1)
    return module.to_out((probs @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], 32)), probs


def test_probe_satisfies_the_protocol():
    assert isinstance(Probe(), AttentionPlugin)


def test_declining_plugins_leave_the_fused_kernel_bit_for_bit(model):
    unet = model.model.diffusion_model
    g = torch.Generator().manual_seed(1)
    x, emb = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([300.0, 300.0])
    declining = Probe(kinds=())
    with torch.no_grad():
        plain = unet(x, t, emb)
        hooked = unet(x, t, UNetContext(emb, torch.ones(2), (declining,), cond_rows=slice(1, 2)))
    assert torch.equal(plain, hooked)
    assert declining.calls == []


def test_cross_plugin_sees_only_its_rows_and_its_bias_lands_there():
    module = layer(context_dim=24).double()
    x, emb, sigma = inputs()
    bias = torch.zeros(2, 2, 12, 77, dtype=torch.float64)
    bias[..., 5] = 3.0
    probe = Probe(modify=lambda s, call: s + bias, observe=True)
    ctx = UNetContext(emb, sigma, (probe,), cond_rows=slice(2, 4), grid=(3, 4))
    with torch.no_grad():
        out = module(x, context=ctx)
        plain, _ = hand_attention(module, x, emb)
        biased, probs = hand_attention(module, x[2:], emb[2:], bias)
    call = probe.calls[0]  # modify_scores, then observe: one call described twice
    assert probe.calls == [call, call]
    assert call.kind == "cross" and call.grid == (3, 4) and call.rows == slice(2, 4)
    assert torch.equal(call.sigma, sigma[2:4]) and call.scale == module.scale
    assert probe.scores[0].shape == (2, 2, 12, 77)
    torch.testing.assert_close(out[:2], plain[:2], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[2:], biased, rtol=0, atol=1e-12)
    torch.testing.assert_close(probe.probs[0], probs, rtol=0, atol=1e-12)
    assert (out[2:] - plain[2:]).abs().max() > 1e-5  # 10^7 times the tolerance above


def test_self_attention_plugin_gets_pixel_by_pixel_scores():
    module = layer().double()
    x, emb, sigma = inputs(rows=2, width=32)
    # keep each pixel's attention on itself only: the output is then to_out(v) of each pixel
    eye = torch.eye(12, dtype=torch.bool)
    probe = Probe(kinds=("self",), acts_on="all", modify=lambda s, call: s.masked_fill(~eye, -1e9))
    ctx = UNetContext(emb, sigma, (probe,), grid=(3, 4))
    with torch.no_grad():
        out = module(x, unet_context=ctx)
        ignored = module(x, context=ctx)  # a cross call: the self-only plug-in is not asked
        v = module.to_v(x)
    assert probe.scores[0].shape == (2, 2, 12, 12) and probe.calls[0].kind == "self"
    assert probe.calls[0].rows == slice(0, 2) and len(probe.calls) == 1
    torch.testing.assert_close(out, module.to_out(v), rtol=0, atol=1e-10)
    torch.testing.assert_close(ignored, hand_attention(module, x, emb)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("group, rows", [("uncond", slice(0, 2)), ("all", slice(0, 4)),
                                         ("cond", slice(2, 4))])
def test_row_groups_of_a_cfg_batch(group, rows):
    module = layer(context_dim=24).double()
    x, emb, sigma = inputs()
    probe = Probe(acts_on=group, modify=lambda s, call: s * 2)
    with torch.no_grad():
        out = module(x, context=UNetContext(emb, sigma, (probe,), cond_rows=slice(2, 4)))
        plain, _ = hand_attention(module, x, emb)
    assert probe.calls[0].rows == rows
    touched = torch.zeros(4, dtype=torch.bool)
    touched[rows] = True
    torch.testing.assert_close(out[~touched], plain[~touched], rtol=0, atol=1e-12)
    assert ((out[touched] - plain[touched]).abs().amax(dim=(1, 2)) > 1e-6).all()


def test_two_plugins_on_different_rows_compose_in_order():
    module = layer(context_dim=24).double()
    x, emb, sigma = inputs()
    shift = Probe(acts_on="cond", modify=lambda s, call: s + 1.5 * (s > 0))
    watcher = Probe(acts_on="all", observe=True)
    ctx = UNetContext(emb, sigma, (shift, watcher), cond_rows=slice(2, 4))
    with torch.no_grad():
        module(x, context=ctx)
        _, plain_probs = hand_attention(module, x, emb)
        q_scores = shift.scores[0]
        _, cond_probs = hand_attention(module, x[2:], emb[2:], 1.5 * (q_scores > 0))
    assert watcher.probs[0].shape == (4, 2, 12, 77) and watcher.calls[0].rows == slice(0, 4)
    torch.testing.assert_close(watcher.probs[0][:2], plain_probs[:2], rtol=0, atol=1e-12)
    torch.testing.assert_close(watcher.probs[0][2:], cond_probs, rtol=0, atol=1e-12)


def test_attention_grids_are_the_grids_the_layers_see():
    cfg = tiny_config().model.params.unet_config
    cfg.params.channel_mult = [1, 1, 1, 1]
    cfg.params.attention_resolutions = [1, 2, 4, 8]
    unet = randomize_(instantiate_from_config(cfg), seed=5)
    watcher = Probe(acts_on="all", observe=True)
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 75, 100, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        unet(x, torch.tensor([500.0]), UNetContext(emb, torch.ones(1), (watcher,)))
    seen = {c.grid for c in watcher.calls}
    # 75 x 100 goes down 75 -> 38 -> 19 -> 10 rows and 100 -> 50 -> 25 -> 13 columns
    assert unet.attention_grids(75, 100) == [(75, 100), (38, 50), (19, 25), (10, 13)]
    assert seen == set(unet.attention_grids(75, 100))


# ---------------------------------------------------------------- the pipeline asks


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def two_colour_map():
    return painted_map(64, 48, ((255, 0, 0), slice(8, 40), slice(4, 30)))


def test_txt2img_refuses_regions(model):
    regions = RegionContext.build("a cat", two_colour_map(), {"#ff0000": "cat,1"}, width=64, height=48)
    with pytest.raises(ValueError, match="paint_with_words"):
        pww_ldm.txt2img(model, "a cat", regions=regions, steps=1, width=64, height=48)


def test_starting_noise_is_drawn_once_with_region_seeds(model, monkeypatch):
    draws = []
    real = run_module.draw_noise
    monkeypatch.setattr(run_module, "draw_noise", lambda *a, **k: draws.append(1) or real(*a, **k))
    pww_ldm.paint_with_words(model, "a cat", two_colour_map(), {"#ff0000": "cat,1,1234"},
                             steps=1, progress=False)
    assert len(draws) == 1


def test_describe_round_trips_through_the_colour_context_parser():
    context = [{"color": "#ff0000", "label": "cat", "weight": 1.5, "seed": 7, "blur": 2.0,
                "outside": -0.5, "occurrence": 1}, {"color": "#000000", "label": "a", "weight": 0.3}]
    regions = RegionContext.build("a cat", two_colour_map(), context, width=64, height=48)
    described = regions.describe()
    assert described[1] == {"color": "#000000", "label": "a", "weight": 0.3}
    again = parse_color_context(described)
    assert [dataclasses.replace(r, token_positions=()) for r in again] == [
        dataclasses.replace(r, token_positions=(), mask=None) for r in regions.regions]


def test_sampling_options_are_frozen_and_checked_before_any_work(model):
    options = SamplingOptions(sampler="DDIM", steps=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 5
    with pytest.raises(TypeError, match="not both"):
        pww_ldm.generate(model, "a cat", options, steps=3)
    with pytest.raises(ValueError, match="sampler"):
        SamplingOptions(sampler="Euler b")
