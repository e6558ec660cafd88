"""DenseDiffusion attention modulation against an independent implementation of the paper's
formula (written as the authors' code computes it: batch*heads flattened, scaled scores, the
layout products layouts_s and reg_sizes), on random q/k at two grids."""

import pytest
import torch
import torch.nn.functional as F

from pww_ldm.conditioning import AttentionCall
from pww_ldm.region.self_attention import DenseCrossAttention, DenseSelfAttention
from pww_ldm.region.timing import StepClock, sigma_to_t

T_STEP = 981  # the first DDIM-50 timestep of the authors' runs
HEIGHT = WIDTH = 64  # px; masks at pixel resolution


def schedule():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def sigma_of(t, abar):
    return ((1 - abar[t]) / abar[t]).sqrt().float().reshape(1)


def layouts():
    """Two painted regions; the oracle adds the unpainted rest as its background segment."""
    a = torch.zeros(HEIGHT, WIDTH)
    a[4:30, 6:40] = 1
    b = torch.zeros(HEIGHT, WIDTH)
    b[36:60, 20:62] = 1
    return [a, b]


def oracle(sim_cond_scaled, masks, res_hw, t, w, sizereg, token_maps=None):
    """DenseDiffusion's update on the scaled cond scores (heads, N, K)."""
    segs = torch.stack(masks + [1 - torch.stack(masks).amax(0)])[:, None]  # (S+1, 1, H, W)
    lay = F.interpolate(segs, res_hw, mode="nearest")
    flat = lay.view(lay.size(0), 1, -1)
    layouts_s = (flat * flat.transpose(1, 2)).sum(0)  # (N, N): segments shared by i and j
    n = res_hw[0] * res_hw[1]
    size_reg = 1 - sizereg * layouts_s.sum(-1, keepdim=True) / n  # (N, 1)
    mask = layouts_s if token_maps is None else token_maps
    treg = (t / 1000) ** 5
    sim = sim_cond_scaled.clone()
    mn, mx = sim.min(-1)[0].unsqueeze(-1), sim.max(-1)[0].unsqueeze(-1)
    sim += (mask > 0) * size_reg * w * treg * (mx - sim)
    sim -= ~(mask > 0) * size_reg * w * treg * (sim - mn)
    return sim


@pytest.mark.parametrize("grid", [(8, 8), (4, 4)])
def test_self_modulation_equals_the_paper_formula(grid):
    torch.manual_seed(grid[0])
    abar = schedule()
    heads, d, n = 4, 16, grid[0] * grid[1]
    q, k = torch.randn(1, heads, n, d), torch.randn(1, heads, n, d)
    scale = d ** -0.5
    scores = (q @ k.transpose(-1, -2)).double()
    plugin = DenseSelfAttention(layouts(), StepClock(50), abar, weight=0.3, sizereg=1.0)
    call = AttentionCall("self", grid, sigma_of(T_STEP, abar).double(), slice(1, 2), scale)
    got = plugin.modify_scores(scores, call) * scale
    want = oracle(scores[0] * scale, layouts(), grid, T_STEP, 0.3, 1.0)
    torch.testing.assert_close(got[0], want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got[0], scores[0] * scale)  # it did modulate


@pytest.mark.parametrize("grid", [(8, 8), (4, 4)])
def test_cross_modulation_equals_the_paper_formula(grid):
    torch.manual_seed(10 + grid[0])
    abar = schedule()
    heads, d, n, n_tokens = 2, 8, grid[0] * grid[1], 77
    q, k = torch.randn(1, heads, n, d), torch.randn(1, heads, n_tokens, d)
    scores = (q @ k.transpose(-1, -2)).double()
    columns = [(2, 3), (6,)]
    pww_maps = torch.zeros(1, n_tokens, HEIGHT, WIDTH)  # the authors' pww_maps (1, 77, H, W)
    for m, cols in zip(layouts(), columns):
        pww_maps[0, list(cols)] = m
    creg = F.interpolate(pww_maps, grid, mode="nearest").view(n_tokens, -1).T  # (N, 77)
    plugin = DenseCrossAttention(layouts(), columns, StepClock(50), abar, weight=1.0)
    call = AttentionCall("cross", grid, sigma_of(700, abar).double(), slice(0, 1), 0.35)
    got = plugin.modify_scores(scores, call)
    want = oracle(scores[0], layouts(), grid, 700, 1.0, 1.0, token_maps=creg)
    torch.testing.assert_close(got[0], want, rtol=1e-6, atol=1e-6)


def test_window_and_timestep():
    abar = schedule()
    t = sigma_to_t(torch.cat([sigma_of(981, abar), sigma_of(3, abar)]), abar)
    torch.testing.assert_close(t, torch.tensor([981.0, 3.0]), atol=1e-3, rtol=0)
    clock = StepClock(10)
    plugin = DenseSelfAttention(layouts(), clock, abar)
    assert plugin.hooks("self") == (True, False) and plugin.hooks("cross") == (False, False)
    clock.advance({"i": 2})  # step 3 of 10 = 30 %: outside the first 30 %
    assert plugin.hooks("self") == (False, False)
    assert DenseSelfAttention(layouts(), StepClock(10), abar, weight=0).hooks("self")[0] is False


class ScoresOnly:
    """The same plug-in without augment_qk: the layer must take its explicit path."""

    def __init__(self, plugin):
        self.plugin, self.acts_on = plugin, plugin.acts_on

    def hooks(self, kind):
        return self.plugin.hooks(kind)

    def modify_scores(self, scores, call):
        return self.plugin.modify_scores(scores, call)

    def observe(self, probs, call):
        pass


@pytest.mark.parametrize("grid", [(8, 8), (4, 4)])
def test_layer_fused_modulation_equals_the_paper_formula(grid, monkeypatch):
    """Through a real attention layer on a CFG batch: the fused path (augmented q/k, never the
    N x N scores) gives softmax(paper(QK^T * scale)) V on the cond row and plain attention on
    the uncond row; the explicit path agrees."""
    from pww_ldm.conditioning import UNetContext
    from pww_ldm.models.cross_attention import CrossAttention

    torch.manual_seed(20 + grid[0])
    abar = schedule()
    n = grid[0] * grid[1]
    module = CrossAttention(32, heads=4, dim_head=8).double()
    x = torch.randn(2, n, 32, dtype=torch.float64)
    sigma = sigma_of(T_STEP, abar).double().repeat(2)
    plugin = DenseSelfAttention(layouts(), StepClock(50), abar, weight=0.3, sizereg=1.0)
    called = []
    monkeypatch.setattr(plugin, "modify_scores", lambda s, c: called.append(c) or s)
    with torch.no_grad():
        fused = module(x, unet_context=UNetContext(x, sigma, (plugin,), cond_rows=slice(1, 2), grid=grid))
        q, k, v = module.project(x, None)
        scores = q @ k.transpose(-1, -2) * module.scale  # (2, heads, N, N)
        want_cond = oracle(scores[1], layouts(), grid, T_STEP, 0.3, 1.0).softmax(-1) @ v[1]
        want = module.merge(torch.stack([scores[0].softmax(-1) @ v[0], want_cond]))
    assert not called  # the fused path never asked for scores
    # 1e-7: the plug-in finds t from a float32 sigma (the oracle takes t = 981 exactly)
    torch.testing.assert_close(fused, want, rtol=1e-6, atol=1e-7)
    monkeypatch.undo()
    with torch.no_grad():
        explicit = module(x, unet_context=UNetContext(x, sigma, (ScoresOnly(plugin),),
                                                      cond_rows=slice(1, 2), grid=grid))
        plain = module(x)
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-12)  # same t: float64 rounding
    assert (fused[1] - plain[1]).abs().max() > 1e-4 and torch.equal(fused[0], plain[0])


def test_row_extremes_in_blocks(monkeypatch):
    import pww_ldm.region.self_attention as sa

    monkeypatch.setattr(sa, "resolve_backend", lambda name: "aten")  # the batched-matmul path
    monkeypatch.setattr(sa, "BLOCK_ELEMENTS", 2 * 3 * 50 * 7)  # 7 rows a block: 3 blocks for 20
    q, k = torch.randn(2, 3, 20, 5), torch.randn(2, 3, 50, 5)
    high, low = sa.row_extremes(q, k)
    scores = q @ k.transpose(-1, -2)
    assert torch.equal(high[..., 0], scores.amax(-1)) and torch.equal(low[..., 0], scores.amin(-1))


@pytest.mark.parametrize("backend", ["onednn", "aten"])
def test_row_extremes_on_either_gemm_library_equal_the_full_scores(monkeypatch, backend):
    import pww_ldm.gemm as gemm
    import pww_ldm.region.self_attention as sa

    if backend == "onednn" and not gemm.onednn_available():
        pytest.skip("this torch build lacks oneDNN")
    monkeypatch.setattr(sa, "resolve_backend", lambda name: backend)
    monkeypatch.setattr(sa, "BLOCK_ELEMENTS", 50 * 7)  # oneDNN path: 7 rows a block per head
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 3, 20, 5, generator=g), torch.randn(2, 3, 50, 5, generator=g)
    high, low = sa.row_extremes(q, k)
    scores = q.double() @ k.double().transpose(-1, -2)  # float64: independent of either library
    torch.testing.assert_close(high[..., 0].double(), scores.amax(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(low[..., 0].double(), scores.amin(-1), rtol=0, atol=1e-5)
