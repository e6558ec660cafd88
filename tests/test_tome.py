"""Token merging (ToMe for SD): the matching against a hand implementation of the paper's
algorithm, where the UNet merges, that it is off bit for bit, and Paint-with-Words with it on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from demo_regions import demo_model, region_ious
from tiny import painted_map, randomize_, tiny_model

import pww_ldm
from pww_ldm.approx import Approximations, ApproxRun
from pww_ldm.conditioning import UNetContext
from pww_ldm.models.attention import BasicTransformerBlock
from pww_ldm.models.token_merge import bipartite_soft_matching_2d, partition
from pww_ldm.region.features import FeatureOptions

KW = dict(steps=3, seed=3, progress=False, width=64, height=64)
PROMPT = "a cat and a dog"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def hand_tome(metric: torch.Tensor, x: torch.Tensor, h: int, w: int, r: int, choice: torch.Tensor,
              stride: tuple[int, int] = (2, 2)) -> tuple[list[torch.Tensor], list[list[int]]]:
    """The paper's bipartite soft matching, one batch row and one token at a time.

    Returns per row the merged tokens [kept srcs by descending similarity; dsts ascending], each
    dst the mean of itself and the srcs merged into it, and per token the merged token standing
    for it (unmerging gives token t the value merged[owner[t]])."""
    sy, sx = stride
    dst = sorted((cy * sy + int(choice[cy, cx]) // sx) * w + cx * sx + int(choice[cy, cx]) % sx
                 for cy in range(h // sy) for cx in range(w // sx))
    src = [t for t in range(h * w) if t not in dst]
    r = min(r, len(src))
    merged_rows, owners = [], []
    for b in range(metric.shape[0]):
        best = {}
        for s in src:
            sims = [_cos(metric[b, s], metric[b, d]) for d in dst]
            k = max(range(len(dst)), key=sims.__getitem__)
            best[s] = (sims[k], dst[k])
        ranked = sorted(src, key=lambda s: -best[s][0])
        moved, kept = ranked[:r], ranked[r:]
        groups = {d: [d] for d in dst}
        for s in moved:
            groups[best[s][1]].append(s)
        merged_rows.append(torch.stack([x[b, s] for s in kept] + [x[b, groups[d]].mean(0) for d in dst]))
        owner = [0] * (h * w)
        for k, s in enumerate(kept):
            owner[s] = k
        for k, d in enumerate(dst, start=len(kept)):
            for t in groups[d]:
                owner[t] = k
        owners.append(owner)
    return merged_rows, owners


def test_a_grid_without_a_full_cell_is_left_exact():
    torch.manual_seed(3)
    block = BasicTransformerBlock(16, 2, 8, context_dim=12).eval()
    x, text = torch.randn(1, 6, 16), torch.randn(1, 5, 12)
    run = ApproxRun(Approximations(tome=0.5, tome_max_downsample=8))
    run.start_call([(1, 6)], ("key",))
    with torch.no_grad():
        merged = block(x, UNetContext(text, torch.ones(1), approx=run).at_grid(1, 6))
        exact = block(x, UNetContext(text, torch.ones(1)).at_grid(1, 6))
    assert torch.equal(merged, exact)


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


@pytest.mark.parametrize("h,w,ratio", [(6, 5, 0.5), (4, 4, 0.3), (5, 7, 0.9)])
def test_merge_and_unmerge_equal_the_hand_implementation(h, w, ratio):
    torch.manual_seed(0)
    metric, x = torch.randn(2, h * w, 4, dtype=torch.float64), torch.randn(2, h * w, 3, dtype=torch.float64)
    choice = torch.randint(4, (h // 2, w // 2))
    r = int(h * w * ratio)
    merge, unmerge = bipartite_soft_matching_2d(metric, h, w, r, (2, 2), choice)
    merged = merge(x)
    hand_merged, owners = hand_tome(metric, x, h, w, r, choice)
    n_src = h * w - (h // 2) * (w // 2)
    assert merged.shape == (2, h * w - min(r, n_src), 3)  # r tokens fewer, at most every src
    torch.testing.assert_close(merged, torch.stack(hand_merged), rtol=0, atol=1e-12)
    hand_full = torch.stack([m[o] for m, o in zip(hand_merged, owners)])
    torch.testing.assert_close(unmerge(merged), hand_full, rtol=0, atol=1e-12)


def test_unmerge_copies_the_merged_value_to_every_merged_token():
    torch.manual_seed(1)
    x = torch.randn(1, 16, 2)
    x[0, 1] = x[0, 0] * 3.0  # same direction as token 0: the most similar src to dst 0
    choice = torch.zeros(2, 2, dtype=torch.long)  # dsts: the top-left token of each cell
    merge, unmerge = bipartite_soft_matching_2d(x, 4, 4, 1, (2, 2), choice)
    out = unmerge(merge(x))
    expected = (x[0, 0] + x[0, 1]) / 2
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[0, 1], expected)
    others = [t for t in range(16) if t not in (0, 1)]
    torch.testing.assert_close(out[0, others], x[0, others])  # nothing else moved


def test_partition_puts_one_destination_in_each_full_cell():
    choice = torch.tensor([[0, 3], [1, 2]])
    src, dst = partition(5, 4, (2, 2), choice)
    # cell (0,0) offset 0 -> (0,0); (0,1) offset 3 -> (1,3); (1,0) offset 1 -> (2,1); (1,1) 2 -> (3,2)
    assert dst.tolist() == [0, 1 * 4 + 3, 2 * 4 + 1, 3 * 4 + 2]
    assert sorted(src.tolist() + dst.tolist()) == list(range(20))  # row 4 (no full cell): srcs


def test_transformer_block_merges_only_its_self_attention():
    torch.manual_seed(2)
    block = BasicTransformerBlock(16, 2, 8, context_dim=12).double().eval()
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    h, w = 4, 6
    x, text = torch.randn(2, h * w, 16, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    run = ApproxRun(Approximations(tome=0.5, tome_seed=7))
    run.start_call([(h, w)], ("key",))
    context = UNetContext(text, torch.ones(2), approx=run).at_grid(h, w)
    with torch.no_grad():
        out = block(x, context)
        # the paper's block: destinations drawn per 2x2 cell, the matching on the pre-norm state
        choice = torch.randint(4, (h // 2, w // 2), generator=torch.Generator().manual_seed(7))
        merged, owners = hand_tome(x, block.norm1(x), h, w, int(h * w * 0.5), choice)
        # attention over each row's merged tokens, then each token takes its merged token's output
        attended = [block.attn1(m[None])[0] for m in merged]
        y = x + torch.stack([a[o] for a, o in zip(attended, owners)])
        y = block.attn2(block.norm2(y), context=text) + y
        y = block.ff(block.norm3(y)) + y
    torch.testing.assert_close(out, y, rtol=0, atol=1e-10)


def token_counts(model, **kwargs) -> dict[str, list[int]]:
    """Tokens each kind of attention sees in one tiny generation: {"self": [...], "cross": [...]}."""
    counts = {"self": [], "cross": []}
    handles = []
    for name, module in model.model.diffusion_model.named_modules():
        for kind, suffix in (("self", "attn1"), ("cross", "attn2")):
            if name.endswith(suffix):
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, kind=kind: counts[kind].append(args[0].shape[1])))
    try:
        pww_ldm.generate(model, PROMPT, **{**KW, "steps": 1}, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def test_merging_happens_at_the_finest_grid_by_default(model):
    # 64 px -> 8x8 latent: grids 8x8 (64 tokens) and 4x4 (16); 0.5 merges int(64 * 0.5) = 32 away
    exact = token_counts(model)
    merged = token_counts(model, approx=Approximations(tome=0.5))
    coarse_too = token_counts(model, approx=Approximations(tome=0.5, tome_max_downsample=2))
    assert sorted(set(exact["self"])) == [16, 64]
    assert sorted(set(merged["self"])) == [16, 32]
    assert sorted(set(coarse_too["self"])) == [8, 32]
    assert merged["cross"] == exact["cross"] == coarse_too["cross"]  # every pixel queries the text


def test_off_is_exact_bit_for_bit(model):
    plain = np.asarray(pww_ldm.generate(model, PROMPT, **KW)[0])
    for off in (Approximations(), Approximations(tome=0.0, tome_max_downsample=8)):
        assert np.array_equal(plain, np.asarray(pww_ldm.generate(model, PROMPT, approx=off, **KW)[0]))
    on = pww_ldm.generate(model, PROMPT, approx=Approximations(tome=0.5), **KW)[0]
    assert not np.array_equal(plain, np.asarray(on))
    assert "ToMe: 0.5" in on.info["parameters"]


def test_seeded_and_fresh_for_every_generation(model):
    approx = Approximations(tome=0.5, tome_seed=11)
    first = np.asarray(pww_ldm.generate(model, PROMPT, approx=approx, **KW)[0])
    again = np.asarray(pww_ldm.generate(model, PROMPT, approx=approx, **KW)[0])
    other = np.asarray(pww_ldm.generate(model, PROMPT, approx=Approximations(tome=0.5, tome_seed=12),
                                        **KW)[0])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_paint_with_words_still_places_the_demo_objects_with_tome_on():
    plain_iou, pww_iou = region_ious(demo_model(), approx=Approximations(tome=0.5))
    # exact, 8 steps: 0.00 without PwW, 0.45 with it (mean over the 3 objects; the star is missed)
    assert pww_iou > plain_iou + 0.3


def test_self_attention_plugins_keep_their_layers_exact():
    model = randomize_(tiny_model(), 1)
    cmap = painted_map(64, 64, ((255, 0, 0), slice(0, 32), slice(0, 64)))
    counts = []
    handles = [m.register_forward_pre_hook(lambda mod, args: counts.append(args[0].shape[1]))
               for n, m in model.model.diffusion_model.named_modules() if n.endswith("attn1")]
    pww_ldm.paint_with_words(model, PROMPT, cmap, {(255, 0, 0): "cat,2"}, approx=Approximations(tome=0.5),
                             features=FeatureOptions(self_attention=0.3, window=1.0),
                             **{**KW, "steps": 1})
    for handle in handles:
        handle.remove()
    assert sorted(set(counts)) == [16, 64]  # DenseDiffusion acts on attn1: no merging there


@pytest.mark.parametrize("bad,message", [(dict(tome=1.0), "tome"), (dict(tome=-0.1), "tome"),
                                         (dict(tome_max_downsample=3), "tome_max_downsample"),
                                         (dict(tome_stride=(1, 1)), "tome_stride"),
                                         (dict(deepcache=-1), "deepcache")])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Approximations(**bad)
