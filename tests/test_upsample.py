"""The folded upsampler (pww_ldm.models.upsample) against the reference interpolate-then-conv."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model
from torch import nn

from pww_ldm.models.autoencoder import Upsample as VaeUpsample
from pww_ldm.models.unet import Upsample as UNetUpsample
from pww_ldm.models.upsample import (
    FoldedKernels,
    drop_folded_kernels,
    phase_kernels,
    set_folded_upsample,
    upsample_conv,
)


def reference(x, conv):
    return conv(F.interpolate(x, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("shape, out_ch, bias", [((2, 8, 5, 7), 6, True), ((1, 3, 1, 1), 4, False),
                                                  ((1, 16, 12, 12), 16, True)])
def test_folded_conv_equals_interpolate_then_conv(shape, out_ch, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], out_ch, 3, padding=1, bias=bias)
    x = torch.randn(*shape, dtype=torch.float64)
    conv = conv.double()
    with torch.no_grad():
        ref = reference(x, conv)
        out = upsample_conv(x, conv, FoldedKernels())
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)  # float64: only rounding differs


def test_phase_kernels_by_hand():
    w = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows [0 1 2], [3 4 5], [6 7 8]
    k = phase_kernels(w)
    # phase (0, 0): rows (w0, w1 + w2), then columns (c0, c1 + c2)
    assert k[0, 0].tolist() == [[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]
    # phase (1, 1): rows (w0 + w1, w2), columns (c0 + c1, c2)
    assert k[3, 0].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]]


def test_cache_follows_in_place_weight_changes_and_drop():
    torch.manual_seed(1)
    up = UNetUpsample(4, use_conv=True)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        first = up(x)
        up.conv.weight.add_(0.5)  # as a LoRA merge does
        torch.testing.assert_close(up(x), reference(x, up.conv), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(up(x), first)
        drop_folded_kernels(up)
        assert up.folded_kernels._kernels is None
        torch.testing.assert_close(up(x), reference(x, up.conv), rtol=1e-5, atol=1e-5)


def test_off_switch_is_the_reference_bit_for_bit_and_odd_sizes_fall_back():
    torch.manual_seed(2)
    model = tiny_model(seed=2)
    assert set_folded_upsample(model, False) == sum(
        isinstance(m, (UNetUpsample, VaeUpsample)) for m in model.modules())
    up = next(m for m in model.modules() if isinstance(m, UNetUpsample))
    x = torch.randn(1, up.conv.in_channels, 5, 5)
    with torch.no_grad():
        assert torch.equal(up(x), reference(x, up.conv))
        set_folded_upsample(model, True)
        odd = up(x, size=(11, 9))  # a skip connection's odd grid: the reference path
        assert torch.equal(odd, up.conv(F.interpolate(x, size=(11, 9), mode="nearest")))


def test_channels_last_and_gradients_keep_the_reference_behaviour():
    torch.manual_seed(3)
    up = VaeUpsample(4, with_conv=True)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = up(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference(x, up.conv), rtol=1e-5, atol=1e-5)
    leaf = x.clone().requires_grad_(True)
    up(leaf).square().sum().backward()  # the reference graph: same gradient as the reference
    expected = x.clone().requires_grad_(True)
    reference(expected, up.conv).square().sum().backward()
    assert torch.equal(leaf.grad, expected.grad)

