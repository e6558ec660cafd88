"""Our UNet, VAE and text encoder against diffusers / transformers holding identical weights."""

import pytest
import torch
from oracle import diffusers_unet, diffusers_vae, transformers_clip
from tiny import TINY_CLIP, tiny_config, tiny_model

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(seed=1)
    return model, model.state_dict()


@pytest.mark.parametrize("hw", [(8, 8), (75, 100), (65, 65), (13, 9)])
def test_unet_matches_diffusers(tiny, hw):
    model, sd = tiny
    oracle = diffusers_unet(tiny_config(), sd)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *hw, generator=g)
    t = torch.tensor([999.0, 17.0])
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ours = model.apply_model(x, t, ctx)
        theirs = oracle(x, t, encoder_hidden_states=ctx).sample
    assert ours.shape == x.shape
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("hw", [(32, 32), (48, 40)])
def test_vae_matches_diffusers(tiny, hw):
    model, sd = tiny
    oracle = diffusers_vae(tiny_config(), sd)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *hw, generator=g) * 2 - 1
    with torch.no_grad():
        ours = model.first_stage_model.encode(image)
        theirs = oracle.encode(image).latent_dist
        assert (ours.mean - theirs.mean).abs().max().item() < TOL
        assert (ours.logvar - theirs.logvar).abs().max().item() < TOL
        z = ours.mean
        assert (model.first_stage_model.decode(z) - oracle.decode(z).sample).abs().max() < TOL


def test_text_encoder_matches_transformers(tiny):
    model, sd = tiny
    oracle = transformers_clip(sd, TINY_CLIP)
    prompts = ["a photo of a cat", "Paint-with-Words: a dog, a tree & the sky!"]
    tokens = model.cond_stage_model.tokenize(prompts)
    with torch.no_grad():
        ours = model.get_learned_conditioning(prompts)
        theirs = oracle(input_ids=tokens).last_hidden_state
    assert ours.shape == (2, 77, 32)
    assert (ours - theirs).abs().max().item() < TOL
