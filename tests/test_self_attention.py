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
