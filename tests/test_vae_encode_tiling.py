"""Tiled VAE encoding: overlapping pixel tiles, posterior moments blended in latent space, and
the seeded sample drawn exactly as for an untiled encode."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model

from pww_ldm import vae
from pww_ldm.models.autoencoder import DiagonalGaussianDistribution
from pww_ldm.vae import decode_tiled, encode_images, encode_tiled

# 72x104 latent px: several tiles of 16 (overlap 4) each way, not a multiple of the tile, and
# the y tiles overlap by 5 where the ramps cover 4, so an unnormalised blend shows.
LATENT_HW = (72, 104)


class PoolEncoder:
    """A stand-in first stage with a local encoder at factor 4 (not SD's 8, so a hard-coded 8
    fails): mean = 4x4 average, log-variance = 4x4 average of the squares."""

    first_stage_model = SimpleNamespace(downsample_factor=4)

    def encode_first_stage(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(torch.cat([F.avg_pool2d(x, 4), F.avg_pool2d(x * x, 4)], 1))


class TileProbe:
    """A stand-in first stage (factor 4) whose tiles disagree on purpose, so the blend weights
    show: fed a coordinate image (channel 0 = y, channel 1 = x, in latent px), a tile encodes
    to its own top-left corner everywhere (mean = (y0, x0), log-variance = (x0, y0) / 8 to stay
    inside the posterior's clamp to [-30, 20]); decoding a coordinate latent likewise gives
    (y0, x0, 0) everywhere in the tile."""

    first_stage_model = SimpleNamespace(downsample_factor=4)

    def encode_first_stage(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        corner = x[:, :2, :1, :1].expand(-1, -1, x.shape[2] // 4, x.shape[3] // 4)
        return DiagonalGaussianDistribution(torch.cat([corner, corner.flip(1) / 8], 1))

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        corner = torch.cat([z[:, :2, :1, :1], torch.zeros_like(z[:, :1, :1, :1])], 1)
        return corner.expand(-1, -1, z.shape[2] * 4, z.shape[3] * 4)


def _coordinates(h: int, w: int, f: int) -> torch.Tensor:
    """(1, 2, f*h, f*w): each pixel's latent y and x (the latent px it falls in)."""
    ys = torch.arange(f * h, dtype=torch.float32) // f
    xs = torch.arange(f * w, dtype=torch.float32) // f
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None]


def _assert_seamless(along_y: torch.Tensor, along_x: torch.Tensor, tile: int, overlap: int,
                     f: int = 1) -> None:
    """along_y, along_x (f*h, f*w): the blended top rows and left columns of latent tiles of
    `tile` and `overlap` latent px, on a grid of f px per latent px. A linear blend makes each
    vary along its own axis only, rising by at most (tile spacing) / (f*overlap + 1) a step,
    and equal a tile's own value where one tile covers; a missing normalisation, a seam (last
    tile wins) or ramps on the wrong edges or axes break one of these."""
    for values in (along_y, along_x.T):
        length, starts = vae._tiles(values.shape[0] // f, tile, overlap)
        steps = values.diff(dim=0)
        assert (values - values[:, :1]).abs().max() < 1e-4  # constant across the other axis
        assert steps.min() > -1e-4
        spacing = max(b - a for a, b in zip(starts, starts[1:]))
        assert steps.max() < spacing / (f * overlap + 1) + 1e-4
        count = torch.zeros(values.shape[0])
        for start in starts:
            count[f * start:f * (start + length)] += 1
        own = torch.tensor([max(s for s in starts if f * s <= i) for i in range(values.shape[0])])
        single = count == 1
        assert torch.allclose(values[single, 0], own[single].to(values.dtype))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def local_model():
    """The tiny model with its encoder's GroupNorms removed: the encoder is then local (each
    latent sees only nearby pixels), so tiling changes it only through the zero padding at tile
    edges. With GroupNorm each tile normalises by its own statistics, and in this random model
    tiled and untiled moments then differ by about their standard deviation, hiding blend errors."""
    m = tiny_model()
    encoder = m.first_stage_model.encoder
    for module in list(encoder.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, name, torch.nn.Identity())
    return m


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, height, width) in [-1, 1]: smooth structure plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(1, 3, height // 8, width // 8, generator=g) * 2 - 1,
                           size=(height, width), mode="bilinear")
    return (coarse + 0.2 * torch.randn(1, 3, height, width, generator=g)).clamp(-1, 1)


def _single_tile_interior(size: int, tile: int, overlap: int, margin: int) -> torch.Tensor:
    """(size,) bool: positions covered by one tile only, `margin` px from its overlaps."""
    length, starts = vae._tiles(size, tile, overlap)
    count = torch.zeros(size)
    for s in starts:
        count[s:s + length] += 1
    inside = count == 1
    shrunk = inside.clone()
    for shift in range(1, margin + 1):
        shrunk[shift:] &= inside[:-shift]
        shrunk[:-shift] &= inside[shift:]
    return shrunk


def test_blend_is_exact_for_a_local_encoder():
    h, w = LATENT_HW
    x = _image(4 * h, 4 * w)
    whole = PoolEncoder().encode_first_stage(x)
    tiled = encode_tiled(PoolEncoder(), x, tile=16, overlap=4)
    assert tiled.mean.shape == whole.mean.shape == (1, 3, h, w)
    assert torch.allclose(tiled.mean, whole.mean, atol=1e-6)
    assert torch.allclose(tiled.logvar, whole.logvar, atol=1e-6)


def test_encode_blend_weights_ramp_linearly_over_the_overlaps():
    h, w = LATENT_HW
    posterior = encode_tiled(TileProbe(), _coordinates(h, w, 4), tile=16, overlap=4)
    mean, logvar = posterior.mean[0], posterior.logvar[0]
    _assert_seamless(mean[0], mean[1], 16, 4)
    _assert_seamless(logvar[1] * 8, logvar[0] * 8, 16, 4)


def test_decode_blend_weights_ramp_linearly_over_the_overlaps():
    h, w = LATENT_HW
    image = decode_tiled(TileProbe(), _coordinates(h, w, 1), tile=16, overlap=4)[0]
    _assert_seamless(image[0], image[1], 16, 4, f=4)


def test_tiled_encode_matches_untiled_with_the_tiny_vae(local_model, monkeypatch):
    """The SD encoder architecture in tiles: the blended moments and the seeded latents match
    the untiled ones. (The TileProbe tests check the blend weights more directly: a local
    encoder's tiles nearly agree in the overlaps, whatever the weights.)"""
    # 36x52 latent px in tiles of 16 overlapping by 4: 3 x 4 tiles, y overlaps of 5 and 4
    monkeypatch.setattr(vae, "encode_tiled", functools.partial(encode_tiled, tile=16, overlap=4))
    h, w = 36, 52
    x = _image(8 * h, 8 * w)
    whole, tiled = local_model.encode_first_stage(x), vae.encode_tiled(local_model, x)
    interior = _single_tile_interior(h, 16, 4, 1)[:, None] & _single_tile_interior(w, 16, 4, 1)[None]
    assert interior.sum() >= 0.1 * h * w
    for a, b in ((whole.mean, tiled.mean), (whole.logvar, tiled.logvar)):
        assert b.shape == a.shape == (1, 4, h, w)
        diff, spread = (b - a).abs(), a.max() - a.min()
        # Measured: 0.8 % of the spread overall (zero padding at the tile edges reaches into the
        # overlaps), 0.002 % in the tile interiors; a crop off by one latent px is 2 % off there.
        assert diff.max() < 0.015 * spread
        assert diff[..., interior].max() < 0.001 * spread
    latents = encode_images(local_model, x, [3], tiled=True)
    assert (latents - encode_images(local_model, x, [3], tiled=False)).abs().max() < 1e-3


def test_one_tile_is_the_untiled_encode(model):
    x = _image(64, 96)
    whole = model.encode_first_stage(x)
    tiled = encode_tiled(model, x, tile=16, overlap=4)
    assert torch.equal(tiled.mean, whole.mean) and torch.equal(tiled.logvar, whole.logvar)


@pytest.mark.parametrize("size, tiled, expect_tiled", [
    ((56, 64), None, False),   # 3584 px: below the threshold
    ((64, 64), None, True),    # 4096 px: at the threshold
    ((64, 72), None, True),
    ((64, 64), False, False),  # explicit choices win
    ((56, 64), True, True),
])
def test_encode_tiles_from_the_threshold_up(model, monkeypatch, size, tiled, expect_tiled):
    monkeypatch.setattr(vae, "TILE_ABOVE_PIXELS", 64 * 64)
    tiled_calls = []

    def spy(m, x):
        tiled_calls.append(x.shape)
        return encode_tiled(m, x, tile=4, overlap=2)

    monkeypatch.setattr(vae, "encode_tiled", spy)
    encoded = []
    original = model.encode_first_stage

    def counting(x):
        encoded.append(x.shape)
        return original(x)

    monkeypatch.setattr(model, "encode_first_stage", counting)
    latents = encode_images(model, _image(*size).expand(2, -1, -1, -1), [1, 2], tiled=tiled)
    assert latents.shape == (2, 4, size[0] // 8, size[1] // 8)
    assert len(tiled_calls) == (2 if expect_tiled else 0)
    # tiles of 4 latent px overlapping by 2: 3 x 3 tiles for 7x8 and 8x8 latents, 3 x 4 for 8x9
    tiles = 3 * (4 if size[1] == 72 else 3)
    assert len(encoded) == 2 * (tiles if expect_tiled else 1)


@pytest.mark.parametrize("tiled", [False, True])
def test_seeded_encoding(model, monkeypatch, tiled):
    monkeypatch.setattr(vae, "encode_tiled", functools.partial(encode_tiled, tile=8, overlap=2))
    x = _image(96, 128).expand(2, -1, -1, -1)
    same = encode_images(model, x, [7, 7], tiled=tiled)
    assert torch.equal(same[0], same[1])
    assert torch.equal(encode_images(model, x, [7, 8], tiled=tiled)[0], same[0])
    assert (encode_images(model, x, [8, 7], tiled=tiled)[0] - same[0]).abs().max() > 1e-3


def test_tiled_sample_uses_the_untiled_noise(model, monkeypatch):
    """Same generator use: the tiled latent is the blended posterior's mean + std * the noise
    the untiled path draws from the seed, so the two differ only by the moments."""
    monkeypatch.setattr(vae, "encode_tiled", functools.partial(encode_tiled, tile=8, overlap=2))
    x = _image(96, 128)
    posterior = encode_tiled(model, x, tile=8, overlap=2)
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    expected = model.scale_factor * (posterior.mean + posterior.std * noise)
    assert torch.allclose(encode_images(model, x, [5], tiled=True), expected, atol=1e-6)


def test_sides_must_be_multiples_of_the_factor(model):
    with pytest.raises(ValueError, match="divisible by 8"):
        encode_tiled(model, torch.zeros(1, 3, 64, 68), tile=4, overlap=2)
