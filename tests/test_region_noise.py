"""Per-region seeds: unit variance at soft edges and overlaps, identity without seeds."""

import torch

from pww_ldm.region import Region, region_noise, resample_mask

LATENT = (4, 6)  # 32 x 48 px


def soft_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Two pixel masks whose latent cells hold 0, fractions, 1, and overlaps summing past 1."""
    a = torch.zeros(32, 48)
    a[:, :20] = 1.0  # latent columns 0-1 full, column 2 half
    a[:, 20:24] = 0.5  # column 2: (4 * 1 + 4 * 0.5) / 8 = 0.75 -> soft edge
    b = torch.zeros(32, 48)
    b[16:, 12:40] = 1.0  # overlaps a in rows 2-3, columns 1-2; column 4 full, column 5 0
    return a, b


def test_no_seed_returns_global_noise_unchanged() -> None:
    noise = torch.randn(2, 4, *LATENT)
    a, _ = soft_masks()
    regions = [Region((0, 0, 0), "cat", 2.0, mask=a), Region((1, 1, 1), "dog", seed=None, mask=a)]
    assert region_noise(regions, noise, LATENT) is noise
    assert region_noise([], noise, LATENT) is noise


def test_region_seed_pins_the_same_noise_for_every_image() -> None:
    full = torch.ones(32, 48)
    noise = torch.randn(3, 4, *LATENT)
    out = region_noise([Region((0, 0, 0), "cat", seed=10, mask=full)], noise, LATENT)
    expected = torch.randn(4, *LATENT, generator=torch.Generator("cpu").manual_seed(10))
    for i in range(3):
        assert torch.equal(out[i], expected)


def test_outside_the_regions_noise_is_bit_identical() -> None:
    a, _ = soft_masks()
    noise = torch.randn(2, 4, *LATENT)
    out = region_noise([Region((0, 0, 0), "cat", seed=5, mask=a)], noise, LATENT)
    assert torch.equal(out[..., 3:], noise[..., 3:])  # latent columns 3+ untouched by a
    assert not torch.equal(out[..., :3], noise[..., :3])


def test_unit_variance_at_soft_edges_and_overlaps() -> None:
    a, b = soft_masks()
    m_a = resample_mask(a, LATENT, level=0)
    m_b = resample_mask(b, LATENT, level=0)
    assert m_a[0, 2] == 0.75 and (m_a + m_b).max() > 1  # soft edges and overlaps exist
    draws = []
    for s in range(400):  # 400 seeds x 4 channels = 1600 draws per latent cell
        regions = [
            Region((0, 0, 0), "cat", seed=100 + s, mask=a),
            Region((1, 1, 1), "dog", seed=900_000 + s, mask=b),
            Region((2, 2, 2), "hat", seed=100 + s, mask=b * 0.3),  # shares cat's seed: merged
        ]
        global_noise = torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(-1 - s))
        draws.append(region_noise(regions, global_noise, LATENT)[0])
    var = torch.cat(draws).var(dim=0)
    assert (var - 1).abs().max() < 0.15, var  # standard error of a variance of 1600 draws: 0.035
