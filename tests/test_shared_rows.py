"""The CFG batch's shared start (pww_ldm.models.shared_rows): computed once, same result."""

import pytest
import torch
from tiny import tiny_model

from pww_ldm.conditioning import UNetContext
from pww_ldm.models.shared_rows import repeat_period, set_shared_rows


def test_repeat_period_finds_the_repeated_rows():
    x = torch.randn(3, 4, 8, 8)
    assert repeat_period(x.repeat(2, 1, 1, 1), torch.tensor([5.0, 6, 7, 5, 6, 7])) == 3
    assert repeat_period(x[:1].repeat(4, 1, 1, 1), torch.full((4,), 9.0)) == 1
    assert repeat_period(x.repeat(2, 1, 1, 1), torch.tensor([5.0, 6, 7, 5, 6, 8])) is None
    assert repeat_period(x, torch.zeros(3)) is None
    assert repeat_period(x[:1], torch.zeros(1)) is None


@pytest.fixture(scope="module")
def unet():
    return tiny_model(seed=4).eval().model.diffusion_model


def _first_block_batches(unet, x, t, context):
    seen = []
    handle = unet.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            shared = unet(x, t, context=context)
            set_shared_rows(unet, False)
            full = unet(x, t, context=context)
    finally:
        handle.remove()
        set_shared_rows(unet, True)
    return seen, shared, full


def test_cfg_batch_runs_its_start_once_with_the_same_result(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g).repeat(2, 1, 1, 1)
    t = torch.tensor([10.0, 20.0, 10.0, 20.0])
    ctx = torch.randn(4, 77, unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features,
                      generator=g)
    seen, shared, full = _first_block_batches(unet, x, t, ctx)
    assert seen == [2, 4]  # shared: the 2 distinct rows; off: all 4
    assert torch.allclose(shared, full, atol=1e-6)
    assert not torch.allclose(shared[:2], shared[2:])  # the texts still differ per half


class _SelfObserver:
    acts_on = "all"

    def hooks(self, kind):
        return (False, kind == "self")

    def observe(self, probs, call):
        pass


def test_no_sharing_when_rows_differ_or_a_plugin_acts_on_self_attention(unet):
    g = torch.Generator().manual_seed(1)
    width = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features
    x, t = torch.randn(1, 4, 16, 16, generator=g).repeat(2, 1, 1, 1), torch.tensor([10.0, 10.0])
    ctx = torch.randn(2, 77, width, generator=g)
    seen, *_ = _first_block_batches(unet, x, torch.tensor([10.0, 11.0]), ctx)
    assert seen == [2, 2]
    hooked = UNetContext(ctx, torch.ones(2), (_SelfObserver(),), cond_rows=slice(1, 2))
    seen, shared, full = _first_block_batches(unet, x, t, hooked)
    assert seen == [2, 2] and torch.equal(shared, full)
