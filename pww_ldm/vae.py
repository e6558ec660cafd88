"""VAE encode/decode for the pipeline: dtype handling and tiling for large images.

The SD VAE at 1024 px needs several GB for its 128-channel full-resolution activations, in
the decoder and the encoder alike; working in overlapping tiles blended linearly keeps memory
bounded. Tile sizes are in latent pixels; image tiles are those times the VAE's factor f.
"""

from __future__ import annotations

import math

import torch

from .models.autoencoder import DiagonalGaussianDistribution
from .models.latent_diffusion import LatentDiffusion
from .models.upsample import drop_folded_kernels

TILE_LATENT = 80        # largest tile in latent pixels (640 px); tiles shrink to cover evenly
TILE_OVERLAP = 16       # overlap in latent pixels
TILE_ABOVE_PIXELS = 1024 * 1024  # tile when an image has at least this many pixels


def _vae_dtype(model: LatentDiffusion) -> torch.dtype:
    return model.first_stage_model.post_quant_conv.weight.dtype


def _ramp(n: int, overlap: int, first: bool, last: bool, device: torch.device) -> torch.Tensor:
    """Blend weights along one axis of a tile: linear ramps over the overlaps."""
    w = torch.ones(n, device=device)
    ramp = torch.linspace(0, 1, overlap + 2, device=device)[1:-1]
    if not first:
        w[:overlap] = ramp
    if not last:
        w[-overlap:] = ramp.flip(0)
    return w


def _mask(th: int, tw: int, overlap: int, first_last: tuple[bool, bool, bool, bool],
          device: torch.device) -> torch.Tensor:
    """(1, 1, th, tw) blend weights of one tile; first_last says which of its top, bottom,
    left and right edges are the image's (no ramp there: nothing to blend with)."""
    top, bottom, left, right = first_last
    wy = _ramp(th, overlap, top, bottom, device)
    wx = _ramp(tw, overlap, left, right, device)
    return (wy[:, None] * wx[None, :])[None, None]


def _tiles(size: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """(tile length, starts): the fewest tiles of at most `tile` that cover `size` while
    overlapping by at least `overlap`, all of one length, spread evenly. 128 latent px with
    tile 80: 2 tiles of 72 (1.27x the untiled work) where fixed 64-tiles need 3 (2.25x)."""
    if size <= tile:
        return size, [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    length = math.ceil((size + (n - 1) * overlap) / n)
    stride = (size - length) / (n - 1)
    return length, [round(i * stride) for i in range(n)]


def decode_tiled(model: LatentDiffusion, z: torch.Tensor, tile: int = TILE_LATENT,
                 overlap: int = TILE_OVERLAP) -> torch.Tensor:
    """Decode (B, 4, h, w) latents tile by tile -> (B, 3, f*h, f*w); overlaps blend linearly."""
    b, _, h, w = z.shape
    f = model.first_stage_model.downsample_factor
    out = torch.zeros(b, 3, h * f, w * f, device=z.device)
    weight = torch.zeros(1, 1, h * f, w * f, device=z.device)
    (th, ys), (tw, xs) = _tiles(h, tile, overlap), _tiles(w, tile, overlap)
    for y in ys:
        for x in xs:
            piece = model.decode_first_stage(z[:, :, y:y + th, x:x + tw]).float()
            edges = (y == ys[0], y == ys[-1], x == xs[0], x == xs[-1])
            mask = _mask(th * f, tw * f, overlap * f, edges, z.device)
            out[:, :, y * f:(y + th) * f, x * f:(x + tw) * f] += piece * mask
            weight[:, :, y * f:(y + th) * f, x * f:(x + tw) * f] += mask
    return out / weight


def encode_tiled(model: LatentDiffusion, pixels: torch.Tensor, tile: int = TILE_LATENT,
                 overlap: int = TILE_OVERLAP) -> DiagonalGaussianDistribution:
    """Encode images (B, 3, H, W) tile by tile -> the posterior over (B, C, H/f, W/f).

    Image tiles are `tile` and `overlap` latent px times f. The tiles' posterior moments
    (mean and log-variance, each (B, C, th, tw)) blend linearly over the overlaps in latent
    space, and the result is an ordinary posterior: sampling it draws the same noise an
    untiled encode would, so the two differ only by the blended moments.
    """
    f = model.first_stage_model.downsample_factor
    b, _, height, width = pixels.shape
    if height % f or width % f:
        raise ValueError(f"tiled encoding needs image sides divisible by {f}, got {width}x{height}")
    h, w = height // f, width // f
    (th, ys), (tw, xs) = _tiles(h, tile, overlap), _tiles(w, tile, overlap)
    moments: torch.Tensor | None = None  # (B, 2C, h, w): C only known from the first tile
    weight = torch.zeros(1, 1, h, w, device=pixels.device)
    for y in ys:
        for x in xs:
            piece = model.encode_first_stage(pixels[:, :, y * f:(y + th) * f, x * f:(x + tw) * f])
            part = torch.cat([piece.mean, piece.logvar], dim=1)
            if moments is None:
                moments = torch.zeros(b, part.shape[1], h, w, device=pixels.device)
            mask = _mask(th, tw, overlap, (y == ys[0], y == ys[-1], x == xs[0], x == xs[-1]),
                         pixels.device)
            # summed in fp32 (an fp16 VAE's weighted sums would lose precision), cast back below
            moments[:, :, y:y + th, x:x + tw] += part.float() * mask
            weight[:, :, y:y + th, x:x + tw] += mask
    # the tiles' dtype and determinism, so sampling it matches the untiled posterior's exactly
    return DiagonalGaussianDistribution((moments / weight).to(part.dtype), piece.deterministic)


@torch.inference_mode()
def decode_latents(model: LatentDiffusion, latents: torch.Tensor, tiled: bool | None = None
                   ) -> torch.Tensor:
    """Diffusion latents (B, 4, h, w) -> images (B, 3, f*h, f*w) float32 in about [-1, 1].

    Decoded one image at a time in the VAE's dtype (float32 by default: fp16 SD VAEs can
    overflow to NaN). tiled: None = automatically from TILE_ABOVE_PIXELS (1024x1024 px) up.
    """
    z = latents.to(model.device, _vae_dtype(model))
    drop_folded_kernels(model.model)  # the UNet's upsampler cache: not held through the decode
    if tiled is None:
        f = model.first_stage_model.downsample_factor
        tiled = z.shape[-2] * f * z.shape[-1] * f >= TILE_ABOVE_PIXELS
    decode = (lambda t: decode_tiled(model, t)) if tiled else model.decode_first_stage
    return torch.cat([decode(z[i:i + 1]).float() for i in range(z.shape[0])])


@torch.inference_mode()
def encode_images(model: LatentDiffusion, pixels: torch.Tensor, seeds: list[int],
                  tiled: bool | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> diffusion latents (B, 4, H/f, W/f), scaled.

    The posterior sample of image i is drawn from a CPU generator seeded with seeds[i], so
    img2img is reproducible (the reference implementation's encoding noise was unseeded).
    tiled: None = automatically from TILE_ABOVE_PIXELS (1024x1024 px) up, as decoding.
    """
    x = pixels.to(model.device, _vae_dtype(model))
    if tiled is None:
        tiled = x.shape[-2] * x.shape[-1] >= TILE_ABOVE_PIXELS
    encode = (lambda t: encode_tiled(model, t)) if tiled else model.encode_first_stage
    out = []
    for i in range(x.shape[0]):
        generator = torch.Generator("cpu").manual_seed(seeds[i])
        out.append(model.get_first_stage_encoding(encode(x[i:i + 1]), generator).float())
    return torch.cat(out)
