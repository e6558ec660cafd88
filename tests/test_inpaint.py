"""Inpainting: kept pixels exact, repainted ones changed, both model kinds, only-masked, PwW."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model
from tiny_families import tiny_family_model

import pww_ldm
from pww_ldm.infotext import parse_parameters
from pww_ldm.masking import MaskError, crop_region, keep_mask, prepare_mask, sampler_inputs

PROMPT = "a photo of a cat and a dog"
KW = dict(steps=3, seed=5, progress=False, strength=0.9)


@pytest.fixture(scope="module", params=["sd1", "sd1-inpainting", "sd2-inpainting"])
def model(request):
    """Each family inpaints: SD v1 by the keep blend alone, the 9-channel models with c_concat."""
    return tiny_model(seed=11) if request.param == "sd1" else tiny_family_model(request.param, 11)


def init_image(size=(64, 48)):
    g = np.random.default_rng(0)
    return Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mask_image(size=(64, 48), box=(16, 8, 48, 40)):
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = 255
    return Image.fromarray(arr)


def color_map(size=(64, 48)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[8:40, 16:32] = (255, 0, 0)
    arr[8:40, 32:48] = (0, 0, 255)
    return Image.fromarray(arr)


def pixels(image):
    return np.asarray(image).astype(int)


def test_kept_pixels_are_exact_and_repainted_ones_change(model):
    out = pww_ldm.inpaint(model, PROMPT, init_image(), mask_image(), mask_blur=2, **KW)[0]
    keep = np.asarray(prepare_mask(mask_image(), (64, 48), 2)) == 0
    assert out.size == (64, 48) and keep.sum() > 1000
    assert np.array_equal(pixels(out)[keep], pixels(init_image())[keep])
    assert np.abs(pixels(out)[~keep] - pixels(init_image())[~keep]).mean() > 5
    text = parse_parameters(out.info["parameters"])
    assert text["Mask blur"] == "2" and text["Denoising strength"] == "0.9"


def test_only_masked_crops_generates_and_pastes_back(model):
    big = init_image((96, 80))
    mask = mask_image((96, 80), box=(40, 30, 60, 50))
    out = pww_ldm.inpaint(model, PROMPT, big, mask, only_masked=True, only_masked_padding=8,
                          width=64, height=48, mask_blur=1, **KW)[0]
    keep = np.asarray(prepare_mask(mask, (96, 80), 1)) == 0
    assert out.size == (96, 80)
    assert np.array_equal(pixels(out)[keep], pixels(big)[keep])
    assert np.abs(pixels(out)[~keep] - pixels(big)[~keep]).mean() > 5
    assert parse_parameters(out.info["parameters"])["Inpaint area"] == "Only masked"


def _last_denoised(run):
    seen = []
    image = run(callback=lambda d: seen.append(d["denoised"].clone()))[0]
    return image, seen[-1]


def test_paint_with_words_inside_the_mask(model):
    ctx_zero = {"#ff0000": "cat,0", "#0000ff": "dog,0"}
    ctx = {"#ff0000": "cat,3", "#0000ff": "dog,3"}
    plain, plain_x0 = _last_denoised(
        lambda **cb: pww_ldm.inpaint(model, PROMPT, init_image(), mask_image(), **KW, **cb))
    zero = pww_ldm.paint_with_words(model, PROMPT, color_map(), ctx_zero, init_image=init_image(),
                                    mask_image=mask_image(), **KW)[0]
    painted, painted_x0 = _last_denoised(
        lambda **cb: pww_ldm.inpaint(model, PROMPT, init_image(), mask_image(),
                                     color_map_image=color_map(), color_context=ctx, **KW, **cb))
    assert np.array_equal(np.asarray(plain), np.asarray(zero))
    # The tiny random model's text barely moves uint8 pixels (about 1e-5 in x_0): compare the
    # sampler's x_0 estimate, which zero weights leave bit-identical (above) and regions change.
    inside, outside = (..., slice(1, 5), slice(2, 6)), (..., slice(0, 1), slice(None))
    assert (painted_x0 - plain_x0)[inside].abs().max() > 0
    assert torch.equal(painted_x0[outside], plain_x0[outside])  # the kept latent, blended in
    keep = np.asarray(prepare_mask(mask_image(), (64, 48), 4)) == 0
    assert np.array_equal(pixels(painted)[keep], pixels(plain)[keep])


def test_same_seed_same_image_and_bad_masks(model):
    a = pww_ldm.inpaint(model, PROMPT, init_image(), mask_image(), **KW)[0]
    b = pww_ldm.inpaint(model, PROMPT, init_image(), mask_image(), **KW)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(MaskError, match="black everywhere"):
        pww_ldm.inpaint(model, PROMPT, init_image(), Image.new("L", (64, 48)), **KW)
    with pytest.raises(MaskError, match="needs the image"):
        pww_ldm.txt2img(model, PROMPT, mask=torch.ones(1, 1, 48, 64), steps=2, progress=False,
                        width=64, height=48)


def test_inpainting_model_inputs():
    model = tiny_family_model("sd1-inpainting", 3)
    image = torch.rand(1, 3, 48, 64) * 2 - 1
    mask = torch.zeros(1, 1, 48, 64)
    mask[..., 8:40, 16:48] = 1
    latent = torch.randn(2, 4, 6, 8)
    inputs = sampler_inputs(model, mask, image.expand(2, -1, -1, -1), latent, (48, 64))
    assert inputs["keep_latent"] is latent
    expected_keep = torch.ones(1, 1, 6, 8)
    expected_keep[..., 1:5, 2:6] = 0  # the 8-px-aligned box at latent size
    assert torch.equal(inputs["keep_mask"], expected_keep)
    c_concat = inputs["c_concat"]
    assert c_concat.shape == (1, 5, 6, 8) and torch.equal(c_concat[:, :1], 1 - expected_keep)
    grey = model.inpaint_conditioning(image * (1 - mask), mask)  # what diffusers feeds its UNet
    assert torch.allclose(c_concat, grey)
    # without a mask an inpainting model repaints everything (A1111's txt2img conditioning)
    full = sampler_inputs(model, None, None, None, (48, 64))["c_concat"]
    assert torch.equal(full[:, :1], torch.ones(1, 1, 6, 8))
    assert pww_ldm.txt2img(model, PROMPT, steps=2, progress=False, width=64, height=48)[0].size == (64, 48)


def test_mask_geometry():
    # box 40..60 x 30..50 padded by 8: 36 x 36, widened about its centre to 64:48 = 48 x 36
    assert crop_region(mask_image((96, 80), (40, 30, 60, 50)), 8, 64, 48) == (26, 22, 74, 58)
    assert crop_region(mask_image((96, 80), (0, 0, 10, 70)), 0, 64, 64) == (0, 0, 70, 70)
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8, :] = 1
    assert torch.equal(keep_mask(m, (2, 2)), torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]]))
