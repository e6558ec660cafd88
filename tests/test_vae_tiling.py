"""Tiled VAE decoding: tiles cover every pixel once in total weight and blend without seams."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pww_ldm.vae import decode_tiled


class NearestDecoder:
    """A stand-in first stage whose decode is local (f x nearest upsampling of 3 channels); it
    reports f as a VAE does (`first_stage_model.downsample_factor`)."""

    def __init__(self, factor: int = 8) -> None:
        self.f = factor
        self.first_stage_model = SimpleNamespace(downsample_factor=factor)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z[:, :3], scale_factor=self.f, mode="nearest")


@pytest.mark.parametrize("factor", [8, 4])
def test_tiled_equals_whole_for_a_local_decoder(factor):
    z = torch.randn(2, 4, 40, 57, generator=torch.Generator().manual_seed(0))
    decoder = NearestDecoder(factor)
    whole = decoder.decode_first_stage(z)
    tiled = decode_tiled(decoder, z, tile=16, overlap=4)
    assert tiled.shape == whole.shape == (2, 3, 40 * decoder.f, 57 * decoder.f)
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_small_latents_are_one_tile():
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(decode_tiled(NearestDecoder(), z, tile=16, overlap=4),
                       NearestDecoder().decode_first_stage(z))
