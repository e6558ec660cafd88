"""`<lora:name:weight>` in a prompt through the pipeline: merged for that prompt, out of the
tokens (so region labels keep their columns), recorded as `Lora hashes`, unmerged after."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny import painted_map, tiny_model

import pww_ldm
from pww_ldm.lora import LoraManager, LoraNotFoundError

KW = dict(steps=2, seed=5, progress=False, width=64, height=48)
CONTEXT = {"#ff0000": "cat,2"}


def color_map():
    return painted_map(64, 48, ((255, 0, 0), slice(8, 40), slice(4, 30)))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=13)


@pytest.fixture
def lora_dir(tmp_path, model):
    """A kohya-format LoRA (CompVis spelling of the names) on one UNet and one text layer."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for key, (out_f, in_f) in {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v": (32, 32),
                               "lora_te_text_model_encoder_layers_0_self_attn_v_proj": (32, 32)}.items():
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, in_f, generator=g)
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g)
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(tmp_path / "style.safetensors"))
    model.lora_manager = LoraManager(model, lora_dir=tmp_path)
    yield tmp_path
    model.lora_manager.clear()
    model.lora_manager = None


def pixels(image):
    return np.asarray(image, np.int16)


def test_tagged_prompt_merges_for_that_prompt_only(model, lora_dir):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = pww_ldm.paint_with_words(model, "a cat", color_map(), CONTEXT, **KW)[0]
    tagged = pww_ldm.paint_with_words(model, "a cat <lora:style:0.8>", color_map(), CONTEXT, **KW)[0]
    again = pww_ldm.paint_with_words(model, "a cat", color_map(), CONTEXT, **KW)[0]
    assert np.abs(pixels(tagged) - pixels(plain)).max() > 0
    assert np.array_equal(pixels(again), pixels(plain))  # unmerged exactly when the prompt changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    text = tagged.info["parameters"]
    assert text.startswith("a cat <lora:style:0.8>")  # the prompt is saved with its tags, as A1111
    assert 'Lora hashes: "style: ' in text and "Lora hashes" not in plain.info["parameters"]


def test_tags_do_not_shift_region_labels(model, lora_dir):
    # with the tag in front of the label, "cat" must keep its token column: the same image as
    # the LoRA applied by hand and the prompt without the tag
    tagged = pww_ldm.paint_with_words(model, "<lora:style:1> a cat", color_map(), CONTEXT, **KW)[0]
    model.lora_manager.clear()
    handle = pww_ldm.apply_lora(model, lora_dir / "style.safetensors", 1.0)
    try:
        by_hand = pww_ldm.paint_with_words(model, " a cat", color_map(), CONTEXT, **KW)[0]
    finally:
        handle.remove()
    assert np.array_equal(pixels(tagged), pixels(by_hand))


def test_unknown_lora_names_the_folder_and_what_is_there(model, lora_dir):
    with pytest.raises(LoraNotFoundError) as err:
        pww_ldm.txt2img(model, "a cat <lora:nope:1>", **KW)
    assert str(lora_dir) in str(err.value) and "style" in str(err.value)


def test_fast_model_recompiles_when_its_loras_change(model, lora_dir, monkeypatch):
    import pww_ldm.pipeline as pipeline

    refrozen = []
    monkeypatch.setattr(pipeline, "refreeze", lambda m: refrozen.append(m))
    monkeypatch.setattr(model, "fast", True, raising=False)
    for prompt in ("a cat", "a cat <lora:style:0.5>", "a cat <lora:style:0.5>", "a cat"):
        pww_ldm.txt2img(model, prompt, **KW)
    assert len(refrozen) == 2  # merged, then removed; nothing when the set stays the same
