"""SD 2.x and inpainting networks against diffusers / transformers holding identical weights.

The conversions are diffusers' own (single_file_utils: create_unet_diffusers_config_from_ldm,
convert_ldm_unet_checkpoint, convert_open_clip_checkpoint), so a key-mapping mistake on our
side cannot be mirrored by the oracle.
"""

import pytest
import torch
from diffusers.loaders import single_file_utils as sfu
from oracle import diffusers_unet
from tiny_families import TINY_OPENCLIP, tiny_family_config, tiny_family_model
from transformers import CLIPTextConfig, CLIPTextModel

TOL = 1e-4
PROMPTS = ["a photo of a cat", "Paint-with-Words: a dog, a tree & the sky!"]


@pytest.fixture(scope="module")
def sd2():
    return tiny_family_model("sd2", seed=3)


def openclip_oracle(state_dict: dict, layers: int) -> CLIPTextModel:
    """transformers' CLIPTextModel (GELU, 77 positions) with the first `layers` OpenCLIP blocks,
    converted by diffusers' convert_open_clip_checkpoint (SD 2's text encoder drops the last
    block the same way: penultimate = the model without it, then the final norm)."""
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=TINY_OPENCLIP["width"],
                         intermediate_size=4 * TINY_OPENCLIP["width"], num_hidden_layers=layers,
                         num_attention_heads=TINY_OPENCLIP["heads"], max_position_embeddings=77,
                         hidden_act="gelu", layer_norm_eps=1e-5)
    model = CLIPTextModel(cfg)
    converted = sfu.convert_open_clip_checkpoint(model, dict(state_dict))
    if not hasattr(model, "text_model"):  # transformers >= 5 flattened the module tree
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    expected = set(model.state_dict())
    model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=False)
    missing = {k for k in expected - set(converted) if not k.endswith("position_ids")}
    assert not missing, missing
    return model.eval()


@pytest.mark.parametrize("clip_skip", [2, 1])
def test_openclip_text_tower_matches_transformers(sd2, clip_skip):
    encoder = sd2.cond_stage_model
    assert encoder.clip_skip == 2  # the config's layer: "penultimate"
    oracle = openclip_oracle(sd2.state_dict(), TINY_OPENCLIP["layers"] + 1 - clip_skip)
    tokens = encoder.tokenize(PROMPTS)
    assert tokens[0, 7:].eq(0).all() and tokens[0, 6] == 49407  # 0-padded after EOS, as open_clip
    with torch.no_grad():
        ours = sd2.get_learned_conditioning(PROMPTS, clip_skip=clip_skip)
        theirs = oracle(input_ids=tokens).last_hidden_state
    assert ours.shape == (2, 77, 32)
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("family,hw", [("sd2", (8, 8)), ("sd2", (13, 9)), ("sd1-inpainting", (8, 8)),
                                       ("sd2-inpainting", (11, 8))])
def test_unet_matches_diffusers(family, hw):
    model = tiny_family_model(family, seed=4)
    in_channels = model.model.diffusion_model.in_channels
    oracle = diffusers_unet(tiny_family_config(family), model.state_dict())
    assert oracle.config.use_linear_projection == family.startswith("sd2")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *hw, generator=g)
    extra = torch.randn(2, in_channels - 4, *hw, generator=g)
    t = torch.tensor([999.0, 17.0])
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ours = model.apply_model(x, t, ctx, c_concat=extra if in_channels == 9 else None)
        theirs = oracle(torch.cat([x, extra], 1), t, encoder_hidden_states=ctx).sample
    assert ours.shape == x.shape and ours.abs().mean() > 1e-3
    assert (ours - theirs).abs().max().item() < TOL


def test_hybrid_model_needs_c_concat():
    model = tiny_family_model("sd1-inpainting")
    x, t, ctx = torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match="needs c_concat"):
        model.apply_model(x, t, ctx)


def test_textual_inversion_on_openclip(sd2, tmp_path):
    import copy

    from pww_ldm.models.embeddings import load_embeddings

    encoder = copy.deepcopy(sd2.cond_stage_model)
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    torch.save({"string_to_param": {"*": vectors}}, tmp_path / "mytok.pt")
    assert load_embeddings(encoder, tmp_path / "mytok.pt") == ["mytok"]
    with torch.no_grad():
        ours = encoder.encode(["a photo of mytok"])
        # the same prompt as two new vocabulary rows: no hook involved
        table = encoder.model.token_embedding
        wider = torch.nn.Embedding(table.num_embeddings + 2, 32)
        wider.weight.copy_(torch.cat([table.weight, vectors]))
        ids = [49406, *encoder.tokenizer.encode("a photo of"), 49408, 49409, 49407]
        tokens = torch.tensor([ids + [0] * (77 - len(ids))])
        encoder.model.token_embedding = wider
        expected = encoder.model.hidden_state(tokens, 2)
    assert ours.shape == (1, 77, 32)
    assert (ours - expected).abs().max().item() < 1e-6
