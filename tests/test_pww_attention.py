"""Paint-with-Words inside the UNet: the bias at every cross-attention layer, CFG rows, batches."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import randomize_, tiny_config

from pww_ldm.conditioning import UNetContext
from pww_ldm.config import instantiate_from_config
from pww_ldm.models.cross_attention import CrossAttention
from pww_ldm.region import PaintWithWords, RegionContext

PROMPT = "a photo of a cat and a dog"
CAT_POSITION = 5  # "a photo of a cat" -> BOS 320 1125 539 320 2368: "cat" is token 5
RED = (255, 0, 0)


def four_level_unet():
    """A tiny UNet with cross-attention at all four levels (grids down to 1/8 of the latent)."""
    cfg = tiny_config().model.params.unet_config
    cfg.params.channel_mult = [1, 1, 1, 1]
    cfg.params.attention_resolutions = [1, 2, 4, 8]
    return randomize_(instantiate_from_config(cfg), seed=5)


def hand_map(width, height):
    """Black map with a red rectangle at a place that does not align with any grid."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[height // 5: height // 5 + height // 3 + 3, width // 7: width // 7 + width // 2 + 5] = RED
    return Image.fromarray(arr), (arr == RED).all(-1)


def area_weights(mask, grid, level):
    """Independent brute force: fraction of each cell's in-image pixels that the region covers."""
    s = 8 * 2 ** level
    h, w = grid
    out = np.zeros(grid)
    for i in range(h):
        for j in range(w):
            cell = mask[i * s:(i + 1) * s, j * s:(j + 1) * s]
            out[i, j] = cell.mean()
    return out


def pww_context(emb, sigma, regions, region_rows=None, grid=None):
    """The UNetContext of a call with the Paint-with-Words plug-in on the rows `region_rows`."""
    return UNetContext(emb, sigma, (PaintWithWords(regions),), cond_rows=region_rows, grid=grid)


def capture_cross_attention(unet):
    records = []

    def hook(module, args, kwargs, output):
        records.append((module, args[0], kwargs["context"], output))

    handles = [m.register_forward_hook(hook, with_kwargs=True)
               for name, m in unet.named_modules() if name.endswith("attn2")]
    return records, handles


@pytest.mark.parametrize("size,grids", [
    ((800, 600), [(75, 100), (38, 50), (19, 25), (10, 13)]),
    ((520, 520), [(65, 65), (33, 33), (17, 17), (9, 9)]),
    ((1000, 1000), [(125, 125), (63, 63), (32, 32), (16, 16)]),
])
def test_bias_at_every_layer_matches_the_formula(size, grids):
    width, height = size
    unet = four_level_unet()
    color_map, mask = hand_map(width, height)
    regions = RegionContext.build(PROMPT, color_map, {RED: "cat,1.5"}, width=width, height=height)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, height // 8, width // 8, generator=g)
    emb = torch.randn(2, 77, 32, generator=g)
    sigma = torch.tensor([3.0, 3.0])
    ctx = pww_context(emb, sigma, regions, region_rows=slice(1, 2))
    records, handles = capture_cross_attention(unet)
    with torch.no_grad():
        unet(x, torch.tensor([500.0, 500.0]), ctx)
    for h in handles:
        h.remove()
    seen = {tuple(r[2].grid) for r in records}
    assert seen == set(grids)
    for module, hidden, context, output in records:
        level = grids.index(tuple(context.grid))
        w_cells = torch.tensor(area_weights(mask, context.grid, level), dtype=torch.float32)
        with torch.no_grad():
            q, k, v = module.project(hidden, emb)
            scores = q @ k.transpose(-1, -2)  # (B, H, N, T), unscaled
            weights = torch.zeros(scores.shape[-2:])
            weights[:, CAT_POSITION] = 1.5 * w_cells.flatten()  # rows = pixels, one column only
            bias = torch.zeros_like(scores)
            bias[1] = 0.1 * weights * math.log(1 + 3.0) * scores[1].max()  # cond row only
            probs = ((scores + bias) * module.scale).softmax(-1)
            expected = module.merge(probs @ v)
        assert (output - expected).abs().max().item() < 1e-5, context.grid
        assert weights.abs().sum() > 0


def _fp64_case(rows: int, seed: int):
    """A float64 four-level UNet, a one-region context and `rows` random inputs x and emb."""
    unet = four_level_unet().double()
    color_map, _ = hand_map(96, 64)
    regions = RegionContext.build(PROMPT, color_map, {RED: "cat,2"}, width=96, height=64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, 8, 12, generator=g, dtype=torch.float64)
    emb = torch.randn(rows, 77, 32, generator=g, dtype=torch.float64)
    return unet, regions, x, emb


def test_batched_cfg_equals_separate_calls_and_batches_equal_singles():
    # float64: batch-size effects of CPU BLAS vanish, so 1e-8 separates right from wrong
    unet, regions, x, emb = _fp64_case(4, seed=1)
    sigma = torch.tensor([2.0, 5.0, 2.0, 5.0], dtype=torch.float64)
    t = torch.tensor([400.0, 700.0, 400.0, 700.0])
    # a CFG batch of 2 images: rows [uncond0, uncond1, cond0, cond1]
    ctx = pww_context(emb, sigma, regions, region_rows=slice(2, 4))
    with torch.no_grad():
        batched = unet(x, t, ctx)
        for row in range(4):
            if row < 2:  # unconditional rows: plain SD, no bias at all
                single = unet(x[row:row + 1], t[row:row + 1], emb[row:row + 1])
            else:
                single = unet(x[row:row + 1], t[row:row + 1],
                              pww_context(emb[row:row + 1], sigma[row:row + 1], regions,
                                          region_rows=slice(0, 1)))
            assert (batched[row:row + 1] - single).abs().max().item() < 1e-8
        wrong = unet(x, t, pww_context(emb, sigma, regions, region_rows=slice(0, 2)))
        assert (wrong[:2] - batched[:2]).abs().max().item() > 1e-6  # 100x the tolerance


def test_region_rows_in_the_middle_leave_rows_on_both_sides_plain():
    unet, regions, x, emb = _fp64_case(3, seed=5)
    sigma, t = torch.full((3,), 3.0, dtype=torch.float64), torch.full((3,), 500.0)
    with torch.no_grad():
        batched = unet(x, t, pww_context(emb, sigma, regions, region_rows=slice(1, 2)))
        plain = unet(x, t, emb)
        middle = unet(x[1:2], t[1:2], pww_context(emb[1:2], sigma[1:2], regions))
    assert (batched[[0, 2]] - plain[[0, 2]]).abs().max().item() < 1e-8
    assert (batched[1:2] - middle).abs().max().item() < 1e-8
    assert (batched[1] - plain[1]).abs().max().item() > 1e-6  # the middle row did get a bias


class ProbsRecorder:
    """A plug-in that only observes the cross-attention probabilities of the cond rows."""

    acts_on = "cond"

    def hooks(self, kind):
        return (False, kind == "cross")

    def observe(self, probs, call):
        self.probs = probs


def _probs(module, x, regions, weight_sign):
    recorder = ProbsRecorder()
    ctx = UNetContext(torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2)),
                      torch.tensor([4.0]), (PaintWithWords(regions), recorder), grid=(8, 8))
    module(x, context=ctx)
    return recorder.probs[0].mean(0)  # (N, T), mean over heads


@pytest.mark.parametrize("weight", [2.0, -2.0])
def test_weight_moves_attention_mass_only_inside_the_region(weight):
    module = randomize_(CrossAttention(32, context_dim=32, heads=2, dim_head=16), seed=3)
    color_map, mask = hand_map(64, 64)
    inside = torch.tensor(area_weights(mask, (8, 8), 0).flatten() == 1.0)
    outside = torch.tensor(area_weights(mask, (8, 8), 0).flatten() == 0.0)
    x = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(4))
    zero = RegionContext.build(PROMPT, color_map, {RED: "cat,0"}, width=64, height=64)
    some = RegionContext.build(PROMPT, color_map, {RED: f"cat,{weight}"}, width=64, height=64)
    with torch.no_grad():
        before, after = _probs(module, x, zero, 0), _probs(module, x, some, weight)
    change = after[:, CAT_POSITION] - before[:, CAT_POSITION]
    assert inside.any() and outside.any()
    if weight > 0:
        assert (change[inside] > 0).all()
    else:
        assert (change[inside] < 0).all()
    assert torch.equal(after[outside], before[outside])
