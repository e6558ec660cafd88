"""The full-size SD v1 architecture (860M-parameter UNet) with random weights.

Slow (about 3.4 GB per UNet copy): marked `slow`, kept in CI.
"""

import warnings

import pytest
import torch
from oracle import diffusers_unet
from tiny import randomize_, write_checkpoint

from pww_ldm.config import instantiate_from_config
from pww_ldm.loading import default_v1_config, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_model():
    with torch.device("meta"):
        model = instantiate_from_config(default_v1_config().model)
    model.to_empty(device="cpu")
    model.register_schedule("linear", 1000, 0.00085, 0.012)
    return randomize_(model, seed=0)


def test_full_size_unet_matches_diffusers(full_model):
    unet = full_model.model.diffusion_model
    assert 859_000_000 < sum(p.numel() for p in unet.parameters()) < 860_000_000
    oracle = diffusers_unet(default_v1_config(), full_model.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 24, 20, generator=g)  # odd grids on the way down: 24x20 -> 12x10 -> 6x5 -> 3x3
    t = torch.tensor([321.0])
    ctx = torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        ours = full_model.apply_model(x, t, ctx)
        theirs = oracle(x, t, encoder_hidden_states=ctx).sample
    del oracle
    assert ours.abs().mean() > 1e-3  # random weights everywhere: a non-trivial output
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["sd-v1-random.ckpt", "sd-v1-random.safetensors"])
def test_full_size_checkpoint_loads_without_warnings(full_model, tmp_path, name):
    path = write_checkpoint(full_model, tmp_path / name, dtype=torch.float16, ema_offset=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(path, device="cpu")  # config inferred from the weights: SD v1
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_v.weight"
    assert torch.equal(loaded.state_dict()[key], full_model.state_dict()[key].half().float())
    assert loaded.get_learned_conditioning(["a cat"]).shape == (1, 77, 768)
