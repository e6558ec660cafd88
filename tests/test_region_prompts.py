"""Per-region prompts: the region chunk's tokens get their bias only inside their region and are
suppressed (probability exactly 0) outside it; the region language carries prompt fields."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model

from pww_ldm.conditioning import AttentionCall
from pww_ldm.pipeline import paint_with_words
from pww_ldm.region import ColorContextSyntaxError, RegionError, parse_color_context
from pww_ldm.region.context import RegionContext
from pww_ldm.region.features import FeatureOptions, build_features
from pww_ldm.region.region_prompts import PromptRegion, RegionPrompts, bias_positions
from pww_ldm.region.weighting import get_weight_function


def left_half():
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1  # grid (8, 8) cells of 8 px: columns 0-3 inside, 4-7 outside
    return mask


def test_region_words_biased_inside_and_suppressed_outside():
    torch.manual_seed(0)
    plugin = RegionPrompts([PromptRegion(left_half(), 0, (1, 2), weight=2.0)], 1, 64, 64,
                           get_weight_function("max"), "cond")
    scores = torch.randn(1, 2, 64, 154, dtype=torch.float64)
    call = AttentionCall("cross", (8, 8), torch.tensor([2.0], dtype=torch.float64), slice(1, 2), 0.5)
    out = plugin.modify_scores(scores, call)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[:, :4] = True
    inside = inside.reshape(-1)
    bias = 0.1 * 2.0 * math.log(1 + 2.0) * float(scores.max())  # max: 0.1 * w * log(1+s) * max
    torch.testing.assert_close(out[..., :77], scores[..., :77])  # the prompt's columns untouched
    assert torch.isneginf(out[:, :, ~inside, 77:]).all()  # the whole chunk hidden outside
    torch.testing.assert_close(out[:, :, inside, 78:80], scores[:, :, inside, 78:80] + bias)
    torch.testing.assert_close(out[:, :, inside, 77], scores[:, :, inside, 77])  # BOS: no bias
    torch.testing.assert_close(out[:, :, inside, 80:], scores[:, :, inside, 80:])
    # outside, the softmax over all columns is the plain softmax over the prompt's columns
    probs = (out * 0.5).softmax(-1)
    plain = (scores[..., :77] * 0.5).softmax(-1)
    torch.testing.assert_close(probs[:, :, ~inside, :77], plain[:, :, ~inside])


def test_hidden_uncond_chunk_and_partial_cover():
    mask = torch.zeros(64, 64)
    mask[:, :4] = 1  # half of the first column of 8 px cells
    hidden = RegionPrompts([PromptRegion(mask, 0, (), 0.0, visible=False)], 1, 64, 64, None,
                           "uncond")
    visible = RegionPrompts([PromptRegion(mask, 0, (), 0.0)], 1, 64, 64, None, "uncond")
    scores = torch.randn(1, 1, 64, 154, dtype=torch.float64)
    call = AttentionCall("cross", (8, 8), torch.tensor([1.0], dtype=torch.float64), slice(0, 1), 0.25)
    assert torch.isneginf(hidden.modify_scores(scores, call)[..., 77:]).all()
    out = visible.modify_scores(scores, call)
    # coverage 1/2 in column 0: + log(1/2) / scale, i.e. probabilities halved before normalising
    torch.testing.assert_close(out[0, 0, 0, 77:], scores[0, 0, 0, 77:] + math.log(0.5) / 0.25)
    with pytest.raises(RegionError, match="cannot hold"):
        visible.modify_scores(scores[..., :77], call)


def test_touch_cover_counts_every_cell_the_region_reaches():
    mask = torch.zeros(64, 64)
    mask[:, :4] = 1  # half of each cell of grid column 0
    mask[0, 8:11] = 1  # 3 of cell (0, 1)'s 64 px: under 5 %, not a touch
    mask[8:12, 8] = 1  # 4 of cell (1, 1)'s 64 px: over 5 % (6.25 %), a touch
    words = (1, 2)
    touch = RegionPrompts([PromptRegion(mask, 0, words)], 1, 64, 64, get_weight_function("max"),
                          "cond", cover="touch")
    area = RegionPrompts([PromptRegion(mask, 0, words)], 1, 64, 64, get_weight_function("max"),
                         "cond", cover="area")
    scores = torch.randn(1, 1, 64, 154, dtype=torch.float64)
    call = AttentionCall("cross", (8, 8), torch.tensor([1.0], dtype=torch.float64), slice(1, 2), 0.5)
    out_touch, out_area = touch.modify_scores(scores, call), area.modify_scores(scores, call)
    bos = out_touch[0, 0, :, 77] - scores[0, 0, :, 77]  # + log(cover) / scale on the chunk's BOS
    reached = torch.zeros(8, 8, dtype=torch.bool)
    reached[:, 0], reached[1, 1] = True, True
    torch.testing.assert_close(bos[reached.reshape(-1)], torch.zeros(9, dtype=torch.float64))
    assert torch.isneginf(bos[~reached.reshape(-1)]).all()
    bias = 0.1 * math.log(2.0) * float(scores.max())  # full weight 1 in every touched cell
    torch.testing.assert_close(out_touch[0, 0, 0, 78:80], scores[0, 0, 0, 78:80] + bias)
    torch.testing.assert_close(out_area[0, 0, 0, 77], scores[0, 0, 0, 77] + math.log(0.5) / 0.5)
    with pytest.raises(RegionError, match="cover"):
        RegionPrompts([PromptRegion(mask, 0, ())], 1, 64, 64, None, "cond", cover="box")


@pytest.mark.parametrize("base", [0.0, 0.25])
def test_base_ratio_scales_the_prompts_mass_inside_the_regions(base):
    mask = torch.zeros(64, 64)
    mask[:, :4] = 1  # coverage 1/2 in grid column 0, 0 elsewhere
    mask[:8, :8] = 1  # cell (0, 0) fully covered
    plugin = RegionPrompts([PromptRegion(mask, 0, ())], 1, 64, 64, None, "cond", base=base)
    scores = torch.randn(1, 1, 64, 154, dtype=torch.float64)
    call = AttentionCall("cross", (8, 8), torch.tensor([1.0], dtype=torch.float64), slice(0, 1), 0.5)
    probs = (plugin.modify_scores(scores, call) * 0.5).softmax(-1)
    e = (scores * 0.5).exp()[0, 0]  # unnormalised probabilities before the plug-in
    for cell, cover in ((0, 1.0), (8, 0.5)):  # (0, 0) covered, (1, 0) half covered
        prompt, chunk = e[cell, :77].sum() * (1 - (1 - base) * cover), e[cell, 77:].sum() * cover
        share = prompt / (prompt + chunk)  # the prompt's mass scaled by 1 - (1 - base) * cover
        torch.testing.assert_close(probs[0, 0, cell, :77].sum(), share)
    outside = (scores[0, 0, 1, :77] * 0.5).softmax(-1)  # cell (0, 1): no region, as without it
    torch.testing.assert_close(probs[0, 0, 1, :77], outside)
    with pytest.raises(RegionError, match="base ratio"):
        RegionPrompts([PromptRegion(mask, 0, ())], 1, 64, 64, None, "cond", base=1.5)


@pytest.mark.parametrize("bias_tokens, expected", [("words", (1, 2, 3)), ("words+end", (1, 2, 3, 4)),
                                                    ("end", (4,))])
def test_region_bias_tokens_pick_the_chunks_end_of_text_token(bias_tokens, expected):
    model = tiny_model(seed=1)
    tokenizer = model.cond_stage_model.tokenizer
    ids = tokenizer.encode("a red apple")
    assert len(ids) == 3  # one token per word, so the chunk is [BOS, a, red, apple, EOT, pad...]
    region = dataclasses.replace(parse_color_context([{"color": "#ff0000", "prompt": "a red apple"}])[0],
                                 mask=left_half())
    no_labels = RegionContext([], 1, 64, 64, get_weight_function("max"))
    features = build_features(FeatureOptions(region_bias_tokens=bias_tokens), no_labels, [region],
                              n_steps=2, latent_hw=(8, 8), alphas_cumprod=torch.linspace(0.99, 0.01, 1000),
                              encode=lambda texts: torch.zeros(len(texts), 77, 32), tokenizer=tokenizer)
    cond = features.plugins[0]
    assert cond.acts_on == "cond" and cond.regions[0].words == expected
    assert bias_positions((1, 2), "words+end") == (1, 2, 3)
    with pytest.raises(RegionError, match="bias tokens"):
        bias_positions((1, 2), "all")


def test_record_fields_and_errors():
    regions = parse_color_context([
        {"color": "#ff0000", "prompt": "a fluffy ginger cat, sleeping", "weight": 1.0},
        {"color": "#00ff00", "label": "dog", "prompt": "a small dog", "negative_prompt": "blurry"},
        {"color": "#0000ff", "label": "tree"}])
    assert [(r.label, r.prompt, r.negative_prompt) for r in regions] == [
        ("", "a fluffy ginger cat, sleeping", None), ("dog", "a small dog", "blurry"),
        ("tree", None, None)]
    assert parse_color_context({"#ff0000": "cat,1.5"})[0].prompt is None  # reference form as is
    with pytest.raises(ColorContextSyntaxError, match="needs the region's own prompt"):
        parse_color_context([{"color": "#ff0000", "label": "cat", "negative_prompt": "x"}])
    with pytest.raises(ColorContextSyntaxError, match="missing 'label'"):
        parse_color_context([{"color": "#ff0000"}])
    with pytest.raises(ColorContextSyntaxError, match="prompt must be a non-empty"):
        parse_color_context([{"color": "#ff0000", "prompt": " "}])


@pytest.mark.slow
def test_pipeline_region_prompt_changes_only_what_it_should():
    model = tiny_model(seed=4)
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[8:40, 8:40] = (255, 0, 0)
    cmap = Image.fromarray(arr)
    kw = dict(steps=2, seed=3, progress=False, width=64, height=64)
    seen = []

    class Widths:
        acts_on = "cond"

        def hooks(self, kind):
            return (False, kind == "cross")

        def modify_scores(self, scores, call):
            return scores

        def observe(self, probs, call):
            seen.append(probs.shape[-1])

    own = [{"color": "#ff0000", "prompt": "a red apple", "negative_prompt": "green"}]
    images, maps = paint_with_words(model, "a still life", cmap, own, return_attention=True,
                                    plugins=[Widths()], **kw)
    plain = paint_with_words(model, "a still life", cmap, [], **kw)
    assert set(seen) == {154}  # the prompt's chunk + the region's chunk
    assert set(maps) == {"prompt: a red apple"} and maps["prompt: a red apple"].shape == (1, 8, 8)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(plain[0]))
    assert "PwW region prompts" in images[0].info["parameters"]
    alone = paint_with_words(model, "a still life", cmap, own, features=FeatureOptions(base_ratio=0.0),
                             **kw)
    assert not np.array_equal(np.asarray(alone[0]), np.asarray(images[0]))
    assert "PwW base ratio: 0.0" in alone[0].info["parameters"]
    assert "PwW base ratio" not in images[0].info["parameters"]
    area = paint_with_words(model, "a still life", cmap, own,
                            features=FeatureOptions(region_cover="area"), **kw)
    assert not np.array_equal(np.asarray(area[0]), np.asarray(images[0]))  # touch is the default
    assert "PwW region cover: area" in area[0].info["parameters"]
    assert "PwW region cover" not in images[0].info["parameters"]
    end = paint_with_words(model, "a still life", cmap, own,
                           features=FeatureOptions(region_bias_tokens="words+end"), **kw)
    assert not np.array_equal(np.asarray(end[0]), np.asarray(images[0]))
    assert "PwW region bias tokens: words+end" in end[0].info["parameters"]
    assert "PwW region bias tokens" not in images[0].info["parameters"]
    with pytest.raises(RegionError, match="one chunk of 75 tokens"):
        paint_with_words(model, "a still life", cmap,
                         [{"color": "#ff0000", "prompt": "apple " * 80}], **kw)
