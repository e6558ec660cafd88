"""Attention maps (DAAM-style observer plug-in) and the attention adherence score."""

import numpy as np
import pytest
import torch
from tiny import tiny_model

from pww_ldm.conditioning import UNetContext
from pww_ldm.models.cross_attention import CrossAttention
from pww_ldm.pipeline import generate, paint_with_words
from pww_ldm.region import RegionContext, RegionError
from pww_ldm.region.adherence import THRESHOLD, adherence
from pww_ldm.region.attention_maps import AttentionMaps, region_groups
from pww_ldm.region.timing import StepClock


def toy_layer(seed=0):
    torch.manual_seed(seed)
    layer = CrossAttention(query_dim=8, context_dim=6, heads=2, dim_head=4).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return layer


def hand_probs(layer, x, c):
    """softmax(q k^T / sqrt(d)) per head, written out from the weights: (B, heads, N, T)."""
    wq, wk = layer.to_q.weight.detach(), layer.to_k.weight.detach()
    q = (x @ wq.T).view(x.shape[0], x.shape[1], 2, 4).permute(0, 2, 1, 3)
    k = (c @ wk.T).view(c.shape[0], c.shape[1], 2, 4).permute(0, 2, 1, 3)
    return torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(4) = 2


def test_one_layer_map_equals_the_hand_computation():
    layer = toy_layer()
    x, c = torch.randn(2, 16, 8), torch.randn(2, 77, 6)  # rows [uncond; cond], grid 4 x 4
    maps = AttentionMaps({"cat": (5, 6), "dog": (9,), "tail": (-1,)}, (4, 4))
    ctx = UNetContext(c, torch.tensor([3.0, 3.0]), (maps,), cond_rows=slice(1, 2), grid=(4, 4))
    with torch.no_grad():
        out = layer(x, context=ctx)
        plain = layer(x, context=c)
    probs = hand_probs(layer, x, c)[1:]  # the observer sees the conditional row only
    mean = probs.mean(dim=1)[0]  # (16, 77)
    got = maps.maps()
    torch.testing.assert_close(got["cat"][0], (mean[:, 5] + mean[:, 6]).reshape(4, 4))
    torch.testing.assert_close(got["dog"][0], mean[:, 9].reshape(4, 4))
    torch.testing.assert_close(got["tail"][0], mean[:, 76].reshape(4, 4))  # -1 = last column
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)  # observing changes nothing


def test_layers_are_upsampled_and_weighted_by_resolution():
    fine, coarse = toy_layer(1), toy_layer(2)
    c = torch.randn(1, 77, 6)
    x_fine, x_coarse = torch.randn(1, 16, 8), torch.randn(1, 4, 8)
    maps = AttentionMaps({"w": (3,)}, (4, 4))
    base = UNetContext(c, torch.tensor([1.0]), (maps,))
    with torch.no_grad():
        fine(x_fine, context=base.at_grid(4, 4))
        coarse(x_coarse, context=base.at_grid(2, 2))
    m_fine = hand_probs(fine, x_fine, c).mean(1)[0, :, 3].reshape(4, 4)
    m_coarse = hand_probs(coarse, x_coarse, c).mean(1)[0, :, 3].reshape(2, 2)
    # bilinear 2x2 -> 4x4 (align_corners=False) by hand: edge rows/cols copy, inner ones mix 3:1
    a = m_coarse
    rows = torch.stack([a[0], 0.75 * a[0] + 0.25 * a[1], 0.25 * a[0] + 0.75 * a[1], a[1]])
    up = torch.stack([rows[:, 0], 0.75 * rows[:, 0] + 0.25 * rows[:, 1],
                      0.25 * rows[:, 0] + 0.75 * rows[:, 1], rows[:, 1]], dim=1)
    want = (1.0 * m_fine + 0.25 * up) / 1.25  # weights h*w / (H*W): 1 and 1/4
    torch.testing.assert_close(maps.maps()["w"][0], want)


def test_step_range_counts_only_its_steps():
    layer, c = toy_layer(), torch.randn(1, 77, 6)
    clock = StepClock(4)
    maps = AttentionMaps({"w": (2,)}, (4, 4), clock, steps=(1, 2))
    ctx = UNetContext(c, torch.tensor([1.0]), (maps,), grid=(4, 4))
    xs = [torch.randn(1, 16, 8) for _ in range(3)]
    with torch.no_grad():
        for i, xi in enumerate(xs):
            layer(xi, context=ctx)
            clock.advance({"i": i})
    want = hand_probs(layer, xs[1], c).mean(1)[0, :, 2].reshape(4, 4)
    torch.testing.assert_close(maps.maps()["w"][0], want)
    with pytest.raises(RegionError, match="no attention"):
        AttentionMaps({"w": (2,)}, (4, 4), clock, steps=(9, 10)).maps()


def test_adherence_by_hand():
    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1
    attn = torch.zeros(4, 4)
    attn[0, 0], attn[0, 1], attn[3, 3] = 1.0, 0.3, 1.0  # 0.3 < THRESHOLD * max
    score = adherence(attn, mask)
    assert THRESHOLD == 0.4
    assert score["mass_inside"] == pytest.approx(1.3 / 2.3)
    assert score["iou"] == pytest.approx(1 / 5)  # {(0,0), (3,3)} vs 4 cells: 1 / (4 + 1)
    assert adherence(torch.zeros(4, 4), mask) == {"mass_inside": 0.0, "iou": 0.0}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def test_return_attention_gives_maps_and_the_same_image(model):
    from PIL import Image

    arr = np.zeros((64, 64, 3), np.uint8)
    arr[8:40, 16:56] = (255, 0, 0)
    cmap = Image.fromarray(arr)
    kw = dict(steps=3, seed=1, progress=False, weight_function="max", weight_scale=0.4)
    plain = paint_with_words(model, "a cat and a dog", cmap, {"#ff0000": "cat"}, **kw)
    images, maps = paint_with_words(model, "a cat and a dog", cmap, {"#ff0000": "cat"},
                                    return_attention=True, **kw)
    assert set(maps) == {"cat"} and maps["cat"].shape == (1, 8, 8)
    assert float(maps["cat"].min()) >= 0 and float(maps["cat"].max()) <= 1
    assert np.array_equal(np.asarray(plain[0]), np.asarray(images[0]))  # PwW rows already explicit
    regions = RegionContext.build("a cat and a dog", cmap, {"#ff0000": "cat"}, width=64,
                                  height=64, tokenizer=model.cond_stage_model.tokenizer,
                                  weight_function="max", weight_scale=0.4)
    direct = generate(model, "a cat and a dog", width=64, height=64, regions=regions, steps=3,
                      seed=1, progress=False)
    assert np.array_equal(np.asarray(plain[0]), np.asarray(direct[0]))  # options off = plain PwW
    groups = region_groups(regions.regions, per_token=True)
    assert groups == {"cat": regions.regions[0].token_positions[0]}  # one token: no per-token map
