"""Winograd 3x3 convolutions (pww_ldm.models.winograd) against the direct convolution."""

import pytest
import torch
import torch.nn.functional as F

from pww_ldm.models import winograd
from pww_ldm.models.upsample import FoldedKernels, upsample_conv
from pww_ldm.models.winograd import (
    Conv3x3,
    set_winograd,
    tile_size,
    winograd_conv3x3,
    winograd_upsample_conv3x3,
)


@pytest.mark.parametrize("m", [2, 4])
def test_one_dimensional_transforms_compute_a_correlation(m):
    # F(m, 3): A^T ((G g) * (B^T d)) is the m-output correlation of d (m + 2) with g (3).
    bt, g, at = winograd._cook_toom(m)
    gen = torch.Generator().manual_seed(m)
    for _ in range(5):
        d = torch.randn(m + 2, dtype=torch.float64, generator=gen)
        k = torch.randn(3, dtype=torch.float64, generator=gen)
        expected = torch.stack([(d[i:i + 3] * k).sum() for i in range(m)])
        assert torch.allclose(at @ ((g @ k) * (bt @ d)), expected, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(2, 6, 16, 16), (1, 5, 13, 10), (3, 4, 7, 9)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_the_direct_convolution(m, shape, with_bias):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(7, shape[1], 3, 3, generator=gen)
    b = torch.randn(7, generator=gen) if with_bias else None
    exact = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    ours = winograd_conv3x3(x, w, b, m)
    assert ours.shape == exact.shape and ours.is_contiguous()
    assert (ours.double() - exact).abs().max() < 2e-5 * exact.abs().max()


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(2, 6, 8, 8), (1, 5, 7, 5), (1, 3, 6, 9)])
def test_upsampling_variant_matches_nearest_2x_then_conv(m, shape):
    gen = torch.Generator().manual_seed(sum(shape) + m)
    x = torch.randn(*shape, generator=gen)
    w, b = torch.randn(4, shape[1], 3, 3, generator=gen), torch.randn(4, generator=gen)
    up = F.interpolate(x.double(), scale_factor=2, mode="nearest")
    exact = F.conv2d(up, w.double(), b.double(), padding=1)
    ours = winograd_upsample_conv3x3(x, w, b, m)
    assert ours.shape == exact.shape
    assert (ours.double() - exact).abs().max() < 2e-5 * exact.abs().max()


def test_upsample_conv_takes_winograd_f4_where_it_applies_else_the_folded_kernels(monkeypatch):
    calls = []
    original = winograd.winograd_upsample_conv3x3
    monkeypatch.setattr(winograd, "winograd_upsample_conv3x3",
                        lambda *args: calls.append(args[-1]) or original(*args))
    conv = Conv3x3(128, 128, 3, padding=1).requires_grad_(False)
    x = torch.randn(1, 128, 32, 32)  # a 64x64 output grid: F(4, 3)
    reference = conv._conv_forward(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight,
                                   conv.bias)
    assert torch.allclose(upsample_conv(x, conv, FoldedKernels()), reference, atol=1e-4)
    assert calls == [4]
    small = torch.randn(1, 128, 8, 8)  # 16x16 output: F(2, 3) would be picked, folded is faster
    upsample_conv(small, conv, FoldedKernels())
    set_winograd(conv, False)
    folded = upsample_conv(x, conv, FoldedKernels())
    assert calls == [4] and torch.allclose(folded, reference, atol=1e-4)


def test_chunks_of_tile_rows_give_the_unchunked_result(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 8, 30, 22, generator=gen), torch.randn(8, 8, 3, 3, generator=gen), None
    whole = winograd_conv3x3(x, w, b, 4)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)  # one tile row per chunk: 8 chunks
    chunked = winograd_conv3x3(x, w, b, 4)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(chunked, F.conv2d(x, w, b, padding=1), atol=1e-4)


def test_tile_size_follows_the_measured_thresholds():
    def pick(n, c, o, size):
        return tile_size((n, c, size, size), o)

    assert pick(2, 320, 320, 64) == 4 and pick(1, 512, 512, 64) == 4 and pick(2, 640, 640, 32) == 4
    assert pick(2, 1280, 1280, 16) == 2
    assert pick(2, 1280, 1280, 8) == 0  # the kernel transform is not repaid
    assert pick(1, 4, 512, 64) == 0 and pick(1, 128, 3, 512) == 0  # too few channels


def _spy(monkeypatch):
    calls = []
    original = winograd.winograd_conv3x3

    def spy(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(winograd, "winograd_conv3x3", spy)
    return calls


def test_conv3x3_takes_winograd_only_for_cpu_fp32_inference(monkeypatch):
    calls = _spy(monkeypatch)
    conv = Conv3x3(128, 128, 3, padding=1).requires_grad_(False)
    x = torch.randn(1, 128, 64, 64)
    direct = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(conv(x), direct, atol=1e-4) and calls == [4]
    x.requires_grad_(True)
    assert torch.equal(conv(x), direct) and calls == [4]  # autograd: the direct conv
    assert conv.double()(x.detach().double()).dtype == torch.float64 and calls == [4]
    conv.float()
    set_winograd(conv, False)
    assert torch.equal(conv(x.detach()), direct) and calls == [4]  # off: oneDNN's bits


def test_conv3x3_keeps_channels_last(monkeypatch):
    calls = _spy(monkeypatch)
    conv = Conv3x3(128, 128, 3, padding=1).requires_grad_(False)
    x = torch.randn(2, 128, 16, 16).contiguous(memory_format=torch.channels_last)
    out = conv(x)
    assert calls == [2] and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4)


@pytest.mark.slow
def test_full_size_unet_and_decoder_within_1e3_of_the_direct_path(monkeypatch):
    # The bar for a fast exact path: max abs 1e-3 from eager on a full-size CFG step.
    from tiny import randomize_

    from pww_ldm.config import instantiate_from_config
    from pww_ldm.loading import default_v1_config

    with torch.device("meta"):
        model = instantiate_from_config(default_v1_config().model)
    model.to_empty(device="cpu")
    model.register_schedule("linear", 1000, 0.00085, 0.012)
    model = randomize_(model, seed=0).eval().requires_grad_(False)
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 64, 64, generator=g).repeat(2, 1, 1, 1)  # a CFG batch at 512 px
    t, ctx = torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768, generator=g)
    with torch.no_grad():
        fast = model.apply_model(x, t, ctx)
        assert sorted(set(calls)) == [2, 4]  # 16x16 in F(2, 3), 32x32 and 64x64 in F(4, 3)
        set_winograd(model, False)
        direct = model.apply_model(x, t, ctx)
        z = torch.randn(1, 4, 32, 32, generator=g)
        image_direct = model.first_stage_model.decode(z)
        set_winograd(model, True)
        image_fast = model.first_stage_model.decode(z)
    assert direct.abs().mean() > 1e-3
    assert (fast - direct).abs().max().item() < 1e-3
    assert (image_fast - image_direct).abs().max().item() < 1e-3
