"""VAE encode/decode for the pipeline: dtype handling and tiling for large images.

The SD VAE's decoder at 1024 px needs several GB for its 128-channel full-resolution
activations; decoding in overlapping latent tiles blended linearly keeps memory bounded.
"""

from __future__ import annotations

import math

import torch

from .models.latent_diffusion import LatentDiffusion

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
    """Decode (B, 4, h, w) latents tile by tile -> (B, 3, 8h, 8w); overlaps blend linearly."""
    b, _, h, w = z.shape
    f = 8
    out = torch.zeros(b, 3, h * f, w * f, device=z.device)
    weight = torch.zeros(1, 1, h * f, w * f, device=z.device)
    (th, ys), (tw, xs) = _tiles(h, tile, overlap), _tiles(w, tile, overlap)
    for y in ys:
        for x in xs:
            piece = model.decode_first_stage(z[:, :, y:y + th, x:x + tw]).float()
            wy = _ramp(th * f, overlap * f, y == ys[0], y == ys[-1], z.device)
            wx = _ramp(tw * f, overlap * f, x == xs[0], x == xs[-1], z.device)
            mask = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, y * f:(y + th) * f, x * f:(x + tw) * f] += piece * mask
            weight[:, :, y * f:(y + th) * f, x * f:(x + tw) * f] += mask
    return out / weight


@torch.inference_mode()
def decode_latents(model: LatentDiffusion, latents: torch.Tensor, tiled: bool | None = None
                   ) -> torch.Tensor:
    """Diffusion latents (B, 4, h, w) -> images (B, 3, 8h, 8w) float32 in about [-1, 1].

    Decoded one image at a time in the VAE's dtype (float32 by default: fp16 SD VAEs can
    overflow to NaN). tiled: None = automatically from 1024x1024 px up.
    """
    z = latents.to(model.device, _vae_dtype(model))
    if tiled is None:
        tiled = z.shape[-2] * z.shape[-1] * 64 >= TILE_ABOVE_PIXELS
    decode = (lambda t: decode_tiled(model, t)) if tiled else model.decode_first_stage
    return torch.cat([decode(z[i:i + 1]).float() for i in range(z.shape[0])])


@torch.inference_mode()
def encode_images(model: LatentDiffusion, pixels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> diffusion latents (B, 4, H/8, W/8), scaled.

    The posterior sample of image i is drawn from a CPU generator seeded with seeds[i], so
    img2img is reproducible (the reference implementation's encoding noise was unseeded).
    """
    out = []
    for i in range(pixels.shape[0]):
        posterior = model.encode_first_stage(pixels[i:i + 1].to(model.device, _vae_dtype(model)))
        generator = torch.Generator("cpu").manual_seed(seeds[i])
        out.append(model.get_first_stage_encoding(posterior, generator).float())
    return torch.cat(out)
