"""Hires fix: target size, reproducible, A1111's metadata, PwW in both passes, the upscalers."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import painted_map, tiny_model

from pww_ldm.hires import hires_fix, upscale_latents
from pww_ldm.infotext import parse_parameters

PROMPT = "a photo of a cat and a dog"
KW = dict(steps=2, seed=3, progress=False, width=32, height=24)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def color_map():
    return painted_map(32, 24, ((255, 0, 0), slice(4, 20), slice(2, 15)),
                       ((0, 0, 255), slice(5, 15), slice(18, 30)))


@pytest.mark.parametrize("upscaler,label", [("latent", "Latent"), ("lanczos", "Lanczos"),
                                            ("latent-nearest", "Latent (nearest-exact)")])
def test_target_size_seeded_and_labelled(model, upscaler, label):
    a = hires_fix(model, PROMPT, hr_scale=2, hr_denoise=0.6, hr_upscaler=upscaler, **KW)[0]
    b = hires_fix(model, PROMPT, hr_scale=2, hr_denoise=0.6, hr_upscaler=upscaler, **KW)[0]
    assert a.size == (64, 48) and np.array_equal(np.asarray(a), np.asarray(b))
    text = parse_parameters(a.info["parameters"])
    assert text["Size"] == "32x24" and text["Hires upscale"] == "2" and text["Steps"] == "2"
    assert text["Hires upscaler"] == label and text["Denoising strength"] == "0.6"


def test_hires_steps_and_batch(model):
    kw = dict(KW, seed=7)
    batch = hires_fix(model, PROMPT, hr_scale=1.5, hr_upscaler="lanczos", hr_steps=3,
                      n_images=2, **dict(kw))
    single = hires_fix(model, PROMPT, hr_scale=1.5, hr_upscaler="lanczos", hr_steps=3,
                       **dict(kw, seed=8))[0]
    assert [im.size for im in batch] == [(48, 32), (48, 32)]  # 1.5 x 32x24, multiples of 8
    # fp32 batch-size rounding (BLAS blocking differs with 2 threads) can flip a last uint8 level
    diff = np.abs(np.asarray(batch[1], np.int16) - np.asarray(single, np.int16))
    assert diff.max() <= 1 and diff.mean() < 0.05
    assert parse_parameters(batch[0].info["parameters"])["Hires steps"] == "3"


def test_paint_with_words_in_both_passes(model):
    def run(ctx):
        seen = []
        image = hires_fix(model, PROMPT, color_map_image=color_map(), color_context=ctx,
                          callback=lambda d: seen.append(d["denoised"].clone()), **KW)[0]
        return image, seen

    plain_seen = []
    plain = hires_fix(model, PROMPT, callback=lambda d: plain_seen.append(d["denoised"].clone()),
                      **KW)[0]
    zero, zero_seen = run({"#ff0000": "cat,0", "#0000ff": "dog,0"})
    painted, painted_seen = run({"#ff0000": "cat,2", "#0000ff": "dog,2"})
    assert np.array_equal(np.asarray(plain), np.asarray(zero))
    # 2 steps, then int(0.5 * 2) = 1 img2img step at the target's 6 x 8 latent
    assert len(painted_seen) == 3 and painted_seen[-1].shape[-2:] == (6, 8)
    assert all(not torch.equal(p, q) for p, q in zip(painted_seen, plain_seen))
    assert "PwW regions" in painted.info["parameters"]


def test_upscalers_by_hand_and_bad_arguments(model):
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert torch.equal(upscale_latents(z, (4, 4), "latent-nearest"),
                       z.repeat_interleave(2, 2).repeat_interleave(2, 3))
    # bilinear, half-pixel centres: output pixel 1 sits at input 0.25 -> 1 + 0.25 * (2 - 1)
    assert upscale_latents(z, (4, 4), "latent")[0, 0, 0, 1].item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="lanczos"):
        hires_fix(model, PROMPT, hr_upscaler="esrgan", **KW)
    with pytest.raises(ValueError, match="above 1"):
        hires_fix(model, PROMPT, hr_scale=1.0, **KW)


def test_txt2img_script_hires_flags(tmp_path, capsys):
    from tiny import save_config, tiny_config, write_checkpoint

    from pww_ldm import cli

    write_checkpoint(tiny_model(seed=11), tmp_path / "tiny.ckpt")
    save_config(tiny_config(), tmp_path / "tiny.yaml")
    color_map().save(tmp_path / "map.png")
    argv = ["--ckpt", tmp_path / "tiny.ckpt", "--prompt", PROMPT, "--steps", 2, "--quiet",
            "--W", 32, "--H", 24, "--hr-scale", 2, "--hr-upscaler", "lanczos", "--outdir", tmp_path / "o",
            "--color-map", tmp_path / "map.png", "--color-context", '{"#ff0000": "cat,1"}', "--no-compare"]
    assert cli.main(list(map(str, argv))) == 0
    out = Image.open(tmp_path / "o" / "samples" / "00000.png")
    assert out.size == (64, 48) and "Hires upscaler: Lanczos" in out.info["parameters"]
    assert cli.main(list(map(str, [*argv[:-1], "--hr-denoise", 0]))) == 2
    assert "--hr-denoise must be in (0, 1]" in capsys.readouterr().err
