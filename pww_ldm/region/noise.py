"""Per-region seeds: the initial noise inside a region comes from the region's own seed.

Blend with unit variance: at a latent pixel with region masks m_r (area-averaged at latent
resolution) and background m_bg = clamp(1 - sum m_r, 0, 1), the noise is
    sum_r a_r * noise_r + a_bg * global_noise,   a = m / sqrt(sum_r m_r^2 + m_bg^2),
so sum a^2 = 1 and the blend of independent unit Gaussians is again a unit Gaussian, at soft
edges and overlaps too. (The reference replaces the noise where any seeded mask is > 0 by
sum m_r * noise_r, whose variance drops below 1 at bilinear edges and rises at overlaps.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .masks import resample_mask
from .parse import Region


def seeded_noise(seed: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(n, *shape) float32 CPU noise from torch.Generator('cpu').manual_seed(seed), the same for
    every image: a region seed pins that region's noise across a batch (the painted thing stays
    while the rest varies with seed, seed+1, ...), and a batch still equals its single runs."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator).expand(n, *shape).clone()


def region_noise(
    regions: Sequence[Region], global_noise: torch.Tensor, latent_hw: tuple[int, int]
) -> torch.Tensor:
    """(n, C, h, w) initial noise with each seeded region's own noise blended in.

    regions: those with `seed` not None and a pixel `mask` (H, W) = (8h, 8w) take part; regions
    sharing a seed share one noise (their masks are summed and clipped to 1, so that noise is
    counted once). global_noise: (n, C, h, w) from the global seed. With no seeded region,
    `global_noise` itself is returned (bit for bit); where no seeded mask reaches, values are
    unchanged.
    """
    masks: dict[int, torch.Tensor] = {}
    for region in regions:
        if region.seed is None or region.mask is None:
            continue
        m = resample_mask(region.mask, tuple(latent_hw), "area", level=0)
        masks[region.seed] = (masks[region.seed] + m).clamp(0, 1) if region.seed in masks else m
    if not masks:
        return global_noise
    n, c = global_noise.shape[:2]
    device = global_noise.device
    m = torch.stack(list(masks.values())).to(device)  # (S, h, w)
    m_bg = (1 - m.sum(0)).clamp(0, 1)
    norm = torch.sqrt((m * m).sum(0) + m_bg * m_bg)  # sum m + m_bg >= 1, so norm > 0
    out = global_noise.float() * (m_bg / norm)
    for seed, coef in zip(masks, m / norm, strict=True):
        out = out + seeded_noise(seed, n, (c, *latent_hw)).to(device) * coef
    return out.to(global_noise.dtype)
