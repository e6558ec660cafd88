"""End to end on a tiny model: PwW off = plain SD bit for bit, batches, img2img, the scripts."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

import pww_ldm
from pww_ldm.images import ImageSizeError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of a cat and a dog"


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def color_map(size=(64, 48)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[8:40, 4:30] = (255, 0, 0)
    arr[10:30, 36:60] = (0, 0, 255)
    return Image.fromarray(arr)


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


KW = dict(steps=3, seed=5, progress=False, width=64, height=48)


def test_zero_weights_and_no_regions_are_plain_sd_bit_for_bit(model):
    plain = pww_ldm.txt2img(model, PROMPT, **KW)[0]
    zero = pww_ldm.paint_with_words(model, PROMPT, color_map(), {(255, 0, 0): "cat,0",
                                                                 "#0000ff": "dog,0"}, **KW)[0]
    empty = pww_ldm.paint_with_words(model, PROMPT, color_map(), {}, **KW)[0]
    painted = pww_ldm.paint_with_words(model, PROMPT, color_map(), {(255, 0, 0): "cat,2",
                                                                    "#0000ff": "dog,2"}, **KW)[0]
    assert same(plain, zero) and same(plain, empty)
    assert not same(plain, painted)


@pytest.mark.parametrize("sampler", ["euler_a", "DPM++ 2M Karras", "DDIM"])
def test_batch_of_two_equals_two_single_runs(model, sampler):
    ctx = {(255, 0, 0): "cat,1.5", "#0000ff": "dog,1.0,1234"}
    kw = dict(KW, sampler=sampler)
    batch = pww_ldm.paint_with_words(model, PROMPT, color_map(), ctx, n_images=2, **kw)
    first = pww_ldm.paint_with_words(model, PROMPT, color_map(), ctx, **kw)[0]
    second = pww_ldm.paint_with_words(model, PROMPT, color_map(), ctx, **dict(kw, seed=6))[0]
    for got, want in zip(batch, (first, second)):
        diff = np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16))
        assert diff.max() <= 1  # fp32 batch-size rounding can flip a last uint8 level
    assert "Seed: 6" in batch[1].info["parameters"]


def test_img2img_is_seeded_and_strength_matters(model):
    init = pww_ldm.txt2img(model, PROMPT, **KW)[0]
    a = pww_ldm.img2img(model, PROMPT, init, strength=0.5, steps=4, seed=3, progress=False)[0]
    b = pww_ldm.img2img(model, PROMPT, init, strength=0.5, steps=4, seed=3, progress=False)[0]
    c = pww_ldm.img2img(model, PROMPT, init, strength=0.5, steps=4, seed=4, progress=False)[0]
    assert same(a, b) and not same(a, c) and a.size == init.size


def test_bad_sizes_are_refused(model):
    with pytest.raises(ImageSizeError, match="multiples of 8"):
        pww_ldm.txt2img(model, PROMPT, steps=2, width=60, height=48, progress=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(model, folder / "tiny.ckpt")
    save_config(tiny_config(), folder / "tiny.yaml")
    color_map().save(folder / "map.png")
    (folder / "ctx.json").write_text(json.dumps([{"color": "#ff0000", "label": "cat", "weight": 1},
                                                 {"color": "#0000ff", "label": "dog", "weight": 1}]))
    return folder


def run_script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_scripts_end_to_end(tiny_ckpt, tmp_path):
    common = ["--ckpt", tiny_ckpt / "tiny.ckpt", "--prompt", PROMPT, "--steps", 2, "--seed", 9,
              "--color-map", tiny_ckpt / "map.png", "--color-context", tiny_ckpt / "ctx.json",
              "--quiet"]
    out = run_script("txt2img_pww.py", *common, "--outdir", tmp_path / "a", "--n_samples", 2,
                     "--W", 64, "--H", 48)
    assert out.returncode == 0, out.stderr
    samples = sorted((tmp_path / "a" / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["00000.png", "00001.png"]
    image = Image.open(samples[1])
    assert image.size == (64, 48)
    assert "Seed: 10" in image.info["parameters"] and "PwW regions" in image.info["parameters"]
    assert Image.open(tmp_path / "a" / "grid-0000.png").size == (128, 48)
    again = run_script("txt2img_pww.py", *common, "--outdir", tmp_path / "b", "--n_samples", 2,
                       "--W", 64, "--H", 48)
    assert again.returncode == 0
    assert same(Image.open(samples[0]), Image.open(tmp_path / "b" / "samples" / "00000.png"))

    i2i = run_script("img2img_pww.py", *common, "--outdir", tmp_path / "c",
                     "--init-img", samples[0], "--strength", 0.5)
    assert i2i.returncode == 0, i2i.stderr
    result = Image.open(tmp_path / "c" / "samples" / "00000.png")
    assert result.size == (64, 48) and "Denoising strength: 0.5" in result.info["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", [
    (["--color-context", '{"#00ff00": "cat,1"}'], "not in the colour map"),
    (["--color-context", '{"#ff0000": "horse,1"}'], "horse"),
    (["--W", 60], "multiples of 8"),
    (["--sampler", "Euler z"], "unknown sampler"),
])
def test_script_errors_exit_2_with_one_line_and_no_files(tiny_ckpt, tmp_path, extra, message):
    args = ["--ckpt", tiny_ckpt / "tiny.ckpt", "--prompt", PROMPT, "--steps", 2, "--quiet",
            "--color-map", tiny_ckpt / "map.png", "--color-context", tiny_ckpt / "ctx.json",
            "--outdir", tmp_path / "o", "--W", 64, "--H", 48]
    for i in range(0, len(extra), 2):
        j = args.index(extra[i]) if extra[i] in args else None
        if j is None:
            args += extra[i:i + 2]
        else:
            args[j + 1] = extra[i + 1]
    out = run_script("txt2img_pww.py", *args)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "o").rglob("*.png"))


def test_bf16_weights_give_nearly_the_fp32_image(tiny_ckpt):
    ctx = {(255, 0, 0): "cat,1.5", "#0000ff": "dog,1.0"}
    images = []
    for dtype in ("fp32", "bf16"):
        model = pww_ldm.load_model(tiny_ckpt / "tiny.ckpt", device="cpu", dtype=dtype)
        images.append(np.asarray(pww_ldm.paint_with_words(model, PROMPT, color_map(), ctx, **KW)[0],
                                 np.float64))
    psnr = 10 * np.log10(255.0 ** 2 / ((images[0] - images[1]) ** 2).mean())
    assert 30 < psnr < 100  # close, and not identical: the bf16 path really ran
