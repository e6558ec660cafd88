"""RegionContext: weight-map placement on every grid, token alignment, input errors, bias."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pww_ldm.models.tokenizer import get_tokenizer
from pww_ldm.region import (
    ColorMapError,
    ColorNotInMapError,
    LabelNotInPromptError,
    RegionContext,
    RegionError,
    get_weight_function,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
PROMPT = "a cat and a red dog on the grass"  # tokens: 1 a, 2 cat, 3 and, 4 a, 5 red, 6 dog, ...
CAT_COLUMNS, DOG_COLUMNS = [2], [4, 5, 6]
GRIDS = {
    (600, 800): [(75, 100), (38, 50), (19, 25), (10, 13)],
    (520, 520): [(65, 65), (33, 33), (17, 17), (9, 9)],
    (1000, 1000): [(125, 125), (63, 63), (32, 32), (16, 16)],
}


def hand_map(height: int, width: int) -> np.ndarray:
    """White map with a red rectangle and a blue disc whose edges cut through grid cells."""
    rgb = np.full((height, width, 3), 255, np.uint8)
    rgb[13 : height // 2 + 5, 50 : width // 2 + 11] = RED
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - 0.7 * height) ** 2 + (xx - 0.6 * width) ** 2 < (0.2 * min(height, width)) ** 2
    rgb[disc] = BLUE
    return rgb


def hand_cells(mask: np.ndarray, grid: tuple[int, int], cell: int) -> np.ndarray:
    """Cell values by brute force: the mean over each cell's in-image pixels."""
    out = np.zeros(grid)
    for i in range(grid[0]):
        for j in range(grid[1]):
            out[i, j] = mask[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell].mean()
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


@pytest.mark.parametrize("size", list(GRIDS))
def test_weight_map_placement_every_grid(size, tokenizer) -> None:
    height, width = size
    rgb = hand_map(height, width)
    ctx = RegionContext.build(
        PROMPT,
        Image.fromarray(rgb),
        {RED: "cat,1.0", "#0000ff": "a red dog,-0.5"},
        width=width,
        height=height,
        tokenizer=tokenizer,
    )
    assert ctx.is_active and ctx.n_images == 1
    assert [r.token_positions for r in ctx.regions] == [
        (tuple(CAT_COLUMNS),),
        (tuple(DOG_COLUMNS),),
    ]
    red = (rgb == RED).all(-1).astype(np.float64)
    blue = (rgb == BLUE).all(-1).astype(np.float64)
    for k, (h, w) in enumerate(GRIDS[size]):
        cell = 8 * 2**k
        expected = np.zeros((h * w, 77))
        expected[:, CAT_COLUMNS] = 1.0 * hand_cells(red, (h, w), cell).reshape(-1, 1)
        expected[:, DOG_COLUMNS] = -0.5 * hand_cells(blue, (h, w), cell).reshape(-1, 1)
        got = ctx.weight_map(h, w, "cpu")
        assert got.shape == (1, h * w, 77) and got.dtype == torch.float32
        np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-6)
    # Cached per (h, w, device, dtype).
    assert ctx.weight_map(*GRIDS[size][0], "cpu") is ctx.weight_map(*GRIDS[size][0], "cpu")
    assert ctx.weight_map(*GRIDS[size][0], "cpu", torch.float64).dtype == torch.float64


def test_bilinear_weight_map_is_the_reference_resampling(tokenizer) -> None:
    rgb = hand_map(600, 800)
    ctx = RegionContext.build(
        PROMPT,
        Image.fromarray(rgb),
        {RED: "cat,2"},
        width=800,
        height=600,
        tokenizer=tokenizer,
        resample="bilinear",
    )
    red = torch.from_numpy((rgb == RED).all(-1)).float()
    area = RegionContext.build(
        PROMPT, Image.fromarray(rgb), {RED: "cat,2"}, width=800, height=600, tokenizer=tokenizer
    )
    for h, w in GRIDS[(600, 800)]:
        ref = F.interpolate(red[None, None], size=(h, w), mode="bilinear", align_corners=True)
        got = ctx.weight_map(h, w)
        assert torch.allclose(got[0, :, 2], 2 * ref.reshape(-1), atol=1e-6)
        assert got[0, :, [c for c in range(77) if c != 2]].abs().max() == 0
        assert not torch.allclose(got, area.weight_map(h, w))  # the two resamplings differ


def two_color_map(width=64, height=64) -> Image.Image:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, width // 2 :] = RED
    return Image.fromarray(rgb)


def columns(ctx: RegionContext, image: int = 0) -> list[int]:
    wm = ctx.weight_map(8, 8)[image]
    return torch.nonzero(wm.abs().sum(0)).flatten().tolist()


def test_occurrences(tokenizer) -> None:
    prompt = "a squirrel and a squirrel with boxing gloves"  # squirrel at 2 and 5
    both = RegionContext.build(prompt, two_color_map(), {RED: "squirrel,1"}, width=64, height=64)
    assert columns(both) == [2, 5]
    each = RegionContext.build(
        prompt,
        two_color_map(),
        [
            {"color": "#000000", "label": "squirrel", "occurrence": 1},
            {"color": "#ff0000", "label": "a squirrel", "occurrence": 2, "weight": 3},
        ],
        width=64,
        height=64,
        tokenizer=tokenizer,
    )
    wm = each.weight_map(8, 8)[0]
    assert torch.equal(wm[:, 2], torch.tensor([1.0] * 4 + [0.0] * 4).repeat(8))  # left half
    assert torch.equal(wm[:, 4], torch.tensor([0.0] * 4 + [3.0] * 4).repeat(8))  # right half
    assert torch.equal(wm[:, 4], wm[:, 5]) and columns(each) == [2, 4, 5]
    with pytest.raises(LabelNotInPromptError, match="occurrence 3 asked for, but it occurs 2"):
        RegionContext.build(
            prompt,
            two_color_map(),
            [{"color": "#ff0000", "label": "squirrel", "occurrence": 3}],
            width=64,
            height=64,
        )


def test_label_with_commas_and_overlapping_regions_add() -> None:
    prompt = "a cat, sleeping on a sofa"
    ctx = RegionContext.build(
        prompt,
        two_color_map(),
        {RED: "a cat, sleeping,1.5", (0, 0, 0): "cat,-1"},
        width=64,
        height=64,
    )
    assert ctx.regions[0].label == "a cat, sleeping"
    assert ctx.regions[0].token_positions == ((1, 2, 3, 4),)
    wm = ctx.weight_map(8, 8)[0]
    assert set(wm[:, 2].tolist()) == {1.5, -1.0}  # "cat" painted by both regions, each its half
    assert set(wm[:, 1].tolist()) == {1.5, 0.0}


def test_several_prompts_and_broadcast() -> None:
    ctx = RegionContext.build(
        ["a red cat", "a big red cat"], two_color_map(), {RED: "cat"}, width=64, height=64
    )
    assert ctx.n_images == 2 and ctx.regions[0].token_positions == ((3,), (4,))
    assert columns(ctx, 0) == [3] and columns(ctx, 1) == [4]
    same = RegionContext.build(["a cat"] * 3, two_color_map(), {RED: "cat"}, width=64, height=64)
    assert same.n_images == 1


def test_inactive_contexts() -> None:
    assert not RegionContext.build("a cat", None, None, width=64, height=64).is_active
    assert not RegionContext.build("a cat", two_color_map(), {}, width=64, height=64).is_active
    zero = RegionContext.build("a cat", two_color_map(), {RED: "cat,0"}, width=64, height=64)
    assert not zero.is_active
    noise = torch.randn(1, 4, 8, 8)
    assert zero.initial_noise(noise) is noise


def test_bias_broadcasts_and_matches_weight_function() -> None:
    ctx = RegionContext.build("a cat", two_color_map(), {RED: "cat,2"}, width=64, height=64)
    qk = torch.randn(3, 2, 64, 77)
    sigma = torch.tensor([1.0, 2.0, 14.6])
    bias = ctx.bias(qk, sigma, (8, 8))
    assert bias.shape == (3, 1, 64, 77)
    wm = ctx.weight_map(8, 8)[0]
    for i in range(3):
        expected = 0.1 * wm * torch.log1p(sigma[i]) * qk[i].max()
        assert torch.allclose(bias[i, 0], expected, atol=1e-6)
    with pytest.raises(RegionError, match="do not fit grid"):
        ctx.bias(qk, sigma, (4, 16 + 1))


def test_bias_with_user_callable() -> None:
    calls = []

    def fn(w, sigma, qk):
        calls.append((tuple(w.shape), sigma.dim(), tuple(qk.shape)))
        return w * float(sigma)

    ctx = RegionContext.build(
        "a cat", two_color_map(), {RED: "cat"}, width=64, height=64, weight_function=fn
    )
    bias = ctx.bias(torch.randn(2, 3, 16, 77), torch.tensor([1.0, 5.0]), (4, 4))
    assert calls == [((16, 77), 0, (3, 16, 77))] * 2
    assert bias.shape == (2, 3, 16, 77) and torch.equal(bias[1], 5 * bias[0])
    with pytest.raises(RegionError, match="unknown weight function 'median'.*'log2_std'"):
        get_weight_function("median")


def test_label_not_in_prompt_shows_tokens() -> None:
    with pytest.raises(LabelNotInPromptError) as info:
        RegionContext.build("two cats on a mat", two_color_map(), {RED: "cat"}, width=64, height=64)
    message = str(info.value)
    assert "'cat'" in message and "1:two 2:cats 3:on 4:a 5:mat" in message


def test_label_past_token_75_is_in_chunk_2() -> None:
    # 80 trees + dog: chunk 1 holds 75 trees, chunk 2 (BOS at 77) 5 trees then dog at 77 + 1 + 5.
    prompt = " ".join(["tree"] * 80) + " dog"
    ctx = RegionContext.build(prompt, two_color_map(), {RED: "dog"}, width=64, height=64)
    assert ctx.regions[0].token_positions == ((83,),)
    ok = RegionContext.build(
        prompt,
        two_color_map(),
        [{"color": "#ff0000", "label": "tree", "occurrence": 75}],
        width=64,
        height=64,
    )
    assert ok.regions[0].token_positions == ((75,),)


def test_color_not_in_map() -> None:
    context = {RED: "cat", (0, 255, 0): "dog"}
    with pytest.raises(ColorNotInMapError, match="#00ff00.*'dog'.*colours are: #000000, #ff0000"):
        RegionContext.build("a cat and a dog", two_color_map(), context, width=64, height=64)
    with pytest.warns(UserWarning, match="#00ff00"):
        ctx = RegionContext.build(
            "a cat and a dog", two_color_map(), context, width=64, height=64, strict=False
        )
    assert ctx.is_active and columns(ctx) == [2]


def test_map_errors_and_resize() -> None:
    with pytest.raises(ColorMapError, match="no colour map"):
        RegionContext.build("a cat", None, {RED: "cat"}, width=64, height=64)
    with pytest.raises(RegionError, match="multiples of 8"):
        RegionContext.build("a cat", two_color_map(), {RED: "cat"}, width=60, height=64)
    with pytest.warns(UserWarning, match="resizing the map with nearest"):
        ctx = RegionContext.build("a cat", two_color_map(32, 32), {RED: "cat"}, width=64, height=48)
    assert ctx.regions[0].mask.shape == (48, 64)
    assert ctx.regions[0].mask[:, 32:].eq(1).all() and ctx.regions[0].mask[:, :32].eq(0).all()


def test_rgba_and_palette_maps() -> None:
    for image in (two_color_map().convert("RGBA"), two_color_map().quantize(colors=2)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ctx = RegionContext.build("a cat", image, {RED: "cat"}, width=64, height=64)
        assert ctx.regions[0].mask.sum() == 64 * 32


def test_blur_softens_the_mask() -> None:
    ctx = RegionContext.build("a cat", two_color_map(), {RED: "cat,1,-1,3"}, width=64, height=64)
    mask = ctx.regions[0].mask
    assert 0 < mask[0, 31].item() < 0.5 < mask[0, 32].item() < 1
    assert torch.allclose(mask[:, 42:], torch.ones(64, 22)) and mask[:, :22].eq(0).all()


def test_outside_weight_fills_the_rest_of_the_image(tokenizer) -> None:
    height, width = 64, 96
    rgb = hand_map(height, width)
    records = [{"color": "#ff0000", "label": "cat", "weight": 2.0, "outside": -0.5}]
    ctx = RegionContext.build(PROMPT, Image.fromarray(rgb), records, width=width, height=height,
                              tokenizer=tokenizer)
    cells = torch.tensor(hand_cells((rgb == RED).all(-1), (8, 12), 8), dtype=torch.float32)
    expected = 2.0 * cells - 0.5 * (1 - cells)
    got = ctx.weight_map(8, 12, "cpu")[0]
    assert torch.allclose(got[:, CAT_COLUMNS[0]], expected.flatten())
    assert (got[:, CAT_COLUMNS[0]] < 0).any() and ctx.is_active
    others = [c for c in range(77) if c not in CAT_COLUMNS]
    assert not got[:, others].any()
    only_outside = RegionContext.build(PROMPT, Image.fromarray(rgb), [dict(records[0], weight=0)],
                                       width=width, height=height, tokenizer=tokenizer)
    assert only_outside.is_active
