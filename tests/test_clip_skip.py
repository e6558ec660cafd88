"""Clip skip (A1111: 1 = last layer; N = hidden_states[-N] then the final layer norm) against
transformers' CLIPTextModel's hidden states with the same random weights."""

import pytest
import torch
from oracle import clip_encoder_and_oracle, transformers_clip
from tiny import TINY_CLIP, tiny_model

from pww_ldm.models.text_encoder import FrozenCLIPEmbedder

CONFIG = dict(TINY_CLIP, num_hidden_layers=3)
TOL = 1e-5
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def pair():
    return clip_encoder_and_oracle(CONFIG, seed=5)


def oracle_skip(oracle, tokens: torch.Tensor, clip_skip: int) -> torch.Tensor:
    with torch.no_grad():
        out = oracle(input_ids=tokens, output_hidden_states=True)
        if clip_skip == 1:
            return out.last_hidden_state
        return getattr(oracle, "text_model", oracle).final_layer_norm(out.hidden_states[-clip_skip])


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_clip_skip_matches_hidden_states(pair, clip_skip: int) -> None:
    encoder, oracle = pair
    tokens = encoder.tokenize(PROMPT)
    with torch.no_grad():
        ours = encoder.encode(PROMPT, clip_skip=clip_skip)
    assert (ours - oracle_skip(oracle, tokens, clip_skip)).abs().max() < TOL


def test_clip_skip_values_differ_and_attribute_is_the_default(pair) -> None:
    encoder, _ = pair
    with torch.no_grad():
        one, two = encoder.encode(PROMPT, clip_skip=1), encoder.encode(PROMPT, clip_skip=2)
        assert (one - two).abs().max() > 1e-3
        encoder.clip_skip = 2
        try:
            assert torch.equal(encoder.encode(PROMPT), two)
        finally:
            encoder.clip_skip = 1


def test_penultimate_layer_is_clip_skip_2() -> None:
    torch.manual_seed(0)
    encoder = FrozenCLIPEmbedder(config=CONFIG, layer="penultimate")
    assert encoder.clip_skip == 2


@pytest.mark.parametrize("bad", [0, 4, "2", 1.0, True])
def test_bad_clip_skip_is_refused(pair, bad) -> None:
    encoder, _ = pair
    with pytest.raises(ValueError, match="clip skip must be an integer from 1 .* to 3"):
        encoder.encode(PROMPT, clip_skip=bad)
    with pytest.raises(ValueError, match="clip skip must be"):
        FrozenCLIPEmbedder(config=CONFIG, clip_skip=bad)


def test_latent_diffusion_clip_skip_argument_and_attribute() -> None:
    model = tiny_model(seed=2)  # 2-layer text encoder
    oracle = transformers_clip(model.state_dict(), TINY_CLIP)
    prompts = ["a cat", "a (dog:1.1)"]
    default = model.get_learned_conditioning(prompts)
    skipped = model.get_learned_conditioning(prompts, clip_skip=2)
    tokens = model.cond_stage_model.tokenize(["a cat"])
    assert (skipped[:1] - oracle_skip(oracle, tokens, 2)).abs().max() < TOL
    assert (default[:1] - oracle_skip(oracle, tokens, 1)).abs().max() < TOL
    model.clip_skip = 2
    assert model.cond_stage_model.clip_skip == 2
    assert torch.equal(model.get_learned_conditioning(prompts), skipped)
    with pytest.raises(ValueError, match="from 1 .* to 2"):
        model.clip_skip = 3
