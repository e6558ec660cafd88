"""Batch generation with the scripts' features: inpainting masks, the hires fix, clip skip, LoRA tags,
and the run flags --vae --v-pred --lora --lora-dir --embeddings-dir --clip-skip.

Validation tests need no model; generation runs a tiny random model at 32 px with 2 steps, and
compares the batch's images with the library functions the scripts call (pww_ldm.inpaint,
pww_ldm.hires.hires_fix) on the same checkpoint.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

import pww_ldm
from pww_ldm.batch import job_hash, load_jobs, main, open_inputs, read_records
from pww_ldm.batch.features import TextSettings
from pww_ldm.batch.module import model_id
from pww_ldm.hires import hires_fix
from pww_ldm.region.features import FeatureOptions

CONTEXT = {"#ff0000": "cat,2"}
BASE = {"steps": 2, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    save_config(tiny_config(), folder / "tiny.yaml")
    return write_checkpoint(tiny_model(seed=3), folder / "tiny.ckpt", ema=False)


def write_lora(path: Path, seed: int) -> Path:
    """A kohya LoRA on one UNet and one text-encoder layer of the tiny model (CompVis names)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key in ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v",
                "lora_te_text_model_encoder_layers_0_self_attn_v_proj"):
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, 32, generator=g)
        tensors[f"{key}.lora_up.weight"] = torch.randn(32, 4, generator=g)
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))
    return path


def addnet_hash(path: Path) -> str:
    """A1111's LoRA short hash, by hand: sha256 of a .safetensors file after its JSON header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


@pytest.fixture
def work(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 12:36] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(tmp_path / "black.png")
    cmap = np.zeros((32, 48, 3), np.uint8)
    cmap[4:28, 4:30] = (255, 0, 0)
    Image.fromarray(cmap).save(tmp_path / "map.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "loras").mkdir()
    write_lora(tmp_path / "loras" / "style.safetensors", seed=0)
    return tmp_path


def write_jobs(folder: Path, jobs: list[dict], defaults: dict = BASE) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [{"defaults": defaults}, *jobs]) + "\n")
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.int16)


def parameters(path: Path) -> str:
    with Image.open(path) as image:
        return image.info["parameters"]


# ---- validation, no model -------------------------------------------------------------------

def test_every_bad_feature_field_is_reported_by_line(work, capsys):
    i2i = {"init_image": "init.png"}
    jobs = [
        {"id": "ok", "prompt": "a cat <lora:style:0.5>", "seed": 1, "mask_image": "mask.png", **i2i},
        {"id": "nomask", "prompt": "a", "seed": 1, "mask_image": "gone.png", **i2i},         # 3
        {"id": "notimg", "prompt": "a", "seed": 1, "mask_image": "broken.png", **i2i},       # 4
        {"id": "black", "prompt": "a", "seed": 1, "mask_image": "black.png", **i2i},         # 5
        {"id": "noinit", "prompt": "a", "seed": 1, "mask_image": "mask.png"},                # 6
        {"id": "nums", "prompt": "a", "seed": 1, "mask_blur": -1, "only_masked_padding": 1.5,
         "clip_skip": 0},                                                                    # 7
        {"id": "hr", "prompt": "a", "seed": 1, "hr_scale": 1.0, "hr_denoise": 0,
         "hr_upscaler": "bicubic", "hr_steps": 0},                                           # 8
        {"id": "hri2i", "prompt": "a", "seed": 1, "hr_scale": 2, **i2i},                     # 9
        {"id": "typo", "prompt": "a", "seed": 1, "mask_blr": 2},                             # 10
        {"id": "lora", "prompt": "a <lora:nope:0.5>", "seed": 1},                            # 11
        {"id": "weight", "prompt": "a <lora:style:abc>", "seed": 1},                         # 12
    ]
    path = write_jobs(work, jobs)
    outdir = work / "out"
    assert main(["--jobs", str(path), "--ckpt", str(path), "--outdir", str(outdir),
                 "--lora-dir", str(work / "loras")]) == 2
    err = capsys.readouterr().err
    found = {tuple(line.split(": ")[1:3]) for line in err.splitlines() if "jobs.jsonl:" in line}
    lines = {int(line.split("jobs.jsonl:")[1].split(":")[0]) for line in err.splitlines()
             if "jobs.jsonl:" in line}
    assert lines == set(range(3, 13))
    assert ("job 'nums'", "field 'mask_blur'") in found and ("job 'nums'", "field 'clip_skip'") in found
    assert ("job 'nums'", "field 'only_masked_padding'") in found
    assert {f for j, f in found if j == "job 'hr'"} == {
        "field 'hr_scale'", "field 'hr_denoise'", "field 'hr_upscaler'", "field 'hr_steps'"}
    for job, field in [("nomask", "mask_image"), ("notimg", "mask_image"), ("black", "mask_image"),
                       ("noinit", "mask_image"), ("hri2i", "hr_scale"), ("typo", "mask_blr"),
                       ("lora", "prompt"), ("weight", "prompt")]:
        assert (f"job {job!r}", f"field {field!r}") in found, (job, field, err)
    assert "gone.png does not exist" in err and "broken.png is not an image file" in err
    assert "black everywhere" in err and "inpainting needs init_image" in err
    assert "did you mean 'mask_blur'" in err and "no LoRA named 'nope'" in err
    assert "weight 'abc' is not a number" in err and "hires fix is for text-to-image" in err
    assert "job 'ok'" not in err and not outdir.exists()


def test_bad_run_flags_stop_before_anything_runs(work, capsys):
    path = write_jobs(work, [{"prompt": "a", "seed": 1}])
    common = ["--jobs", str(path), "--ckpt", str(path), "--outdir", str(work / "out")]
    for flags, words in [(["--lora", f"{work / 'none.safetensors'}:0.5"], "--lora"),
                         (["--embeddings-dir", str(work / "noemb")], "--embeddings-dir"),
                         (["--vae", str(work / "none.vae.pt")], "--vae")]:
        assert main([*common, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {words} ") and Path(flags[1].split(":")[0]).name in err, err
        assert "does not exist" in err or "no such file" in err, err
    with pytest.raises(SystemExit):
        main([*common, "--clip-skip", "0"])
    assert "--clip-skip: must be an integer >= 1" in capsys.readouterr().err
    assert not (work / "out").exists()


def test_strength_defaults_follow_the_library(work):
    jobs = load_jobs(write_jobs(work, [
        {"id": "i2i", "prompt": "a", "seed": 1, "init_image": "init.png"},
        {"id": "inp", "prompt": "a", "seed": 1, "init_image": "init.png", "mask_image": "mask.png"},
        {"id": "set", "prompt": "a", "seed": 1, "init_image": "init.png", "mask_image": "mask.png",
         "strength": 0.3}]))
    assert [j.strength for j in jobs] == [0.5, 0.75, 0.3]  # img2img 0.5, pww_ldm.inpaint 0.75
    assert jobs[1].mask_image == str(work / "mask.png")  # relative to the job file


def test_hash_covers_what_changes_the_images_and_nothing_else(work, ckpt):
    def digest(text: TextSettings | None = None, **fields) -> str:
        job = load_jobs(write_jobs(work, [{"prompt": "a cat", "seed": 1, **fields}]))[0]
        return job_hash(job, open_inputs(job), "m", text)

    loras = TextSettings(lora_dir=str(work / "loras"))
    inp = {"init_image": "init.png", "mask_image": "mask.png"}
    plain = digest()
    # unused features leave a job's hash as it was
    assert digest(mask_blur=9, hr_denoise=0.9, only_masked_padding=3) == plain
    assert digest(loras) == plain and digest(**inp, only_masked_padding=3) == digest(**inp)
    different = [digest(**inp), digest(**inp, mask_blur=1), digest(**inp, invert_mask=True),
                 digest(**inp, only_masked=True), digest(**inp, only_masked=True, only_masked_padding=3),
                 digest(hr_scale=2), digest(hr_scale=2, hr_denoise=0.3), digest(hr_scale=2, hr_steps=3),
                 digest(hr_scale=2, hr_upscaler="lanczos"), digest(hr_scale=1.5), digest(clip_skip=2),
                 digest(loras, prompt="a cat <lora:style:0.5>"),
                 digest(loras, prompt="a cat <lora:style:0.6>"),
                 digest(TextSettings(fixed_loras=((str(work / "loras" / "style.safetensors"), 1.0),)))]
    assert len({plain, *different}) == len(different) + 1
    assert digest(TextSettings(clip_skip=2)) == digest(clip_skip=2)  # the job's or the run's: same
    tagged = digest(loras, prompt="a cat <lora:style:0.5>")
    write_lora(work / "loras" / "style.safetensors", seed=1)  # same name, other weights
    assert digest(loras, prompt="a cat <lora:style:0.5>") != tagged
    Image.open(work / "mask.png").crop((0, 0, 48, 30)).resize((48, 32)).save(work / "mask.png")
    assert digest(**inp) != different[0]  # the mask file's content counts, not its name
    # embeddings count where a prompt uses them
    (work / "emb").mkdir()
    torch.save({"string_to_param": {"*": torch.ones(1, 32)}}, work / "emb" / "tok.pt")
    emb = TextSettings(embeddings=str(work / "emb"))
    used = digest(emb, prompt="a tok cat")
    assert digest(emb) == plain and used != digest(prompt="a tok cat")
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}}, work / "emb" / "tok.pt")
    assert digest(emb, prompt="a tok cat") != used
    # the model id: a separate VAE and a forced parameterization are other weights
    assert len({model_id(ckpt, None), model_id(ckpt, None, vae=ckpt), model_id(ckpt, None, None, "v")}) == 3
    assert model_id(ckpt, None) == f"tiny.ckpt:{ckpt.stat().st_size}:auto"  # unchanged format


# ---- generation -----------------------------------------------------------------------------

def run(path: Path, outdir: Path, ckpt: Path, *flags: str) -> int:
    return main(["--jobs", str(path), "--ckpt", str(ckpt), "--outdir", str(outdir), "--accelerator",
                 "cpu", "--quiet", *map(str, flags)])


def test_inpaint_and_hires_jobs_equal_the_library_calls(work, ckpt):
    common = {"prompt": "a cat", "seed": 4, "steps": 2}
    pww = {"color_map": "map.png", "color_context": CONTEXT}
    jobs = [
        {"id": "inp", **common, "init_image": "init.png", "mask_image": "mask.png", "mask_blur": 0,
         "width": 48, "height": 32},
        {"id": "inp-pww", **common, **pww, "init_image": "init.png", "mask_image": "mask.png",
         "only_masked": True, "only_masked_padding": 4, "width": 32, "height": 32, "strength": 0.9},
        {"id": "hr", **common, "width": 32, "height": 32, "hr_scale": 1.5, "hr_steps": 1},
        {"id": "hr-pww", **common, **pww, "hr_scale": 2, "hr_upscaler": "lanczos", "hr_denoise": 0.6},
    ]
    outdir = work / "out"
    assert run(write_jobs(work, jobs, {}), outdir, ckpt) == 0
    model = pww_ldm.load_model(ckpt, device="cpu")
    init, mask = Image.open(work / "init.png"), Image.open(work / "mask.png")
    cmap = Image.open(work / "map.png")
    kw = dict(steps=2, seed=4, progress=False)
    expected = {
        "inp": pww_ldm.inpaint(model, "a cat", init, mask, mask_blur=0, width=48, height=32, **kw),
        "inp-pww": pww_ldm.inpaint(model, "a cat", init, mask, only_masked=True, only_masked_padding=4,
                                   width=32, height=32, strength=0.9, color_map_image=cmap,
                                   color_context=CONTEXT, **kw),
        "hr": hires_fix(model, "a cat", hr_scale=1.5, hr_steps=1, width=32, height=32, **kw),
        "hr-pww": hires_fix(model, "a cat", hr_scale=2, hr_upscaler="lanczos", hr_denoise=0.6,
                            color_map_image=cmap, color_context=CONTEXT, **kw),
    }
    for name, images in expected.items():
        want = np.asarray(images[0].convert("RGB"), np.int16)
        assert np.array_equal(pixels(outdir / f"{name}.png"), want), name
    sizes = {name: Image.open(outdir / f"{name}.png").size for name in expected}
    assert sizes == {"inp": (48, 32), "inp-pww": (48, 32), "hr": (48, 48), "hr-pww": (96, 64)}
    got, original = pixels(outdir / "inp.png"), pixels(work / "init.png")
    outside = np.asarray(mask) == 0
    assert np.array_equal(got[outside], original[outside]) and not np.array_equal(got, original)
    assert "Mask blur: 0" in parameters(outdir / "inp.png")
    assert "Inpaint area: Only masked" in parameters(outdir / "inp-pww.png")
    assert "Hires upscale: 2" in parameters(outdir / "hr-pww.png")
    assert "Hires upscaler: Lanczos" in parameters(outdir / "hr-pww.png")
    records = read_records(outdir / "manifest.jsonl")
    jobs[2]["hr_steps"] = 2  # one hires field changed: that job alone is redone
    assert run(write_jobs(work, jobs, {}), outdir, ckpt) == 0
    again = read_records(outdir / "manifest.jsonl")
    assert [r["cached"] for r in again] == [True, True, False, True]
    assert again[2]["hash"] != records[2]["hash"]


def test_clip_skip_lora_and_text_flags(work, ckpt):
    lora = work / "loras" / "style.safetensors"
    jobs = [{"id": "plain", "prompt": "a cat", "seed": 2},
            {"id": "skip", "prompt": "a cat", "seed": 2, "clip_skip": 2},
            {"id": "after", "prompt": "a cat", "seed": 2},
            {"id": "lora", "prompt": "a cat <lora:style:0.8>", "seed": 2}]
    path = write_jobs(work, jobs)
    one = work / "one"
    assert run(path, one, ckpt, "--lora-dir", work / "loras") == 0
    assert "Clip skip: 2" in parameters(one / "skip.png")
    assert "Clip skip" not in parameters(one / "after.png")  # restored after the job
    assert np.array_equal(pixels(one / "plain.png"), pixels(one / "after.png"))
    assert not np.array_equal(pixels(one / "plain.png"), pixels(one / "skip.png"))
    assert not np.array_equal(pixels(one / "plain.png"), pixels(one / "lora.png"))
    assert f'Lora hashes: "style: {addnet_hash(lora)}"' in parameters(one / "lora.png")
    assert parameters(one / "lora.png").startswith("a cat <lora:style:0.8>")
    # The run's flags: --clip-skip is the jobs' default, --lora merges for every job.
    two = work / "two"
    assert run(path, two, ckpt, "--lora-dir", work / "loras", "--clip-skip", 2,
               "--lora", f"{lora}:0.5") == 0
    assert all("Clip skip: 2" in parameters(two / f"{j['id']}.png") for j in jobs)
    assert all('Lora hashes: "style: ' in parameters(two / f"{j['id']}.png") for j in jobs)
    assert not np.array_equal(pixels(two / "skip.png"), pixels(one / "skip.png"))  # + the LoRA
    hashes = {r["id"]: r["hash"] for r in read_records(one / "manifest.jsonl")}
    assert all(r["hash"] != hashes[r["id"]] for r in read_records(two / "manifest.jsonl"))


def test_vae_v_pred_and_clip_skip_range(work, ckpt, capsys):
    path = write_jobs(work, [{"id": "a", "prompt": "a cat", "seed": 2}])
    base, vae, vpred = work / "base", work / "vae", work / "vpred"
    assert run(path, base, ckpt) == 0
    assert run(path, vae, ckpt, "--vae", ckpt) == 0  # the checkpoint's own VAE: same pixels
    assert run(path, vpred, ckpt, "--v-pred") == 0
    assert np.array_equal(pixels(base / "a.png"), pixels(vae / "a.png"))
    assert not np.array_equal(pixels(base / "a.png"), pixels(vpred / "a.png"))
    digests = [read_records(d / "manifest.jsonl")[0]["hash"] for d in (base, vae, vpred)]
    assert len(set(digests)) == 3
    # the tiny text encoder has 2 layers: clip_skip 3 stops the run before any image
    bad = write_jobs(work, [{"id": "ok", "prompt": "a cat", "seed": 2},
                            {"id": "deep", "prompt": "a cat", "seed": 2, "clip_skip": 3}])
    capsys.readouterr()
    assert run(bad, work / "bad", ckpt) == 2
    err = capsys.readouterr().err
    assert "job 'deep' (line 3)" in err and "from 1 (last layer) to 2" in err
    assert not list((work / "bad").glob("*.png"))


def test_region_feature_fields_reach_the_library_and_the_hash(work, ckpt, capsys):
    pww = {"prompt": "a cat", "seed": 4, "steps": 2, "color_map": "map.png", "color_context": CONTEXT}
    bad = write_jobs(work, [{"id": "neg", **pww, "self_attention": -0.3},
                            {"id": "word", **pww, "attention_guidance": "strong"},
                            {"id": "base", **pww, "base_ratio": 1.5},
                            {"id": "cover", **pww, "region_cover": "box"},
                            {"id": "tokens", **pww, "region_bias_tokens": "all"}])
    assert run(bad, work / "bad", ckpt) == 2
    err = capsys.readouterr().err
    assert "field 'self_attention'" in err and "field 'attention_guidance'" in err
    assert "field 'base_ratio'" in err and "must be in [0, 1]" in err
    assert "field 'region_cover'" in err and "'box'" in err
    assert "field 'region_bias_tokens'" in err and "'all'" in err
    assert not (work / "bad").exists()
    jobs = [{"id": "plain", **pww}, {"id": "dense", **pww, "self_attention": 0.3, "dense_cross": 1.0},
            {"id": "guided", **pww, "attention_guidance": 0.2}]
    outdir = work / "out"
    assert run(write_jobs(work, jobs, {}), outdir, ckpt) == 0
    model = pww_ldm.load_model(ckpt, device="cpu")
    want = pww_ldm.paint_with_words(model, "a cat", Image.open(work / "map.png"), CONTEXT, steps=2,
                                    seed=4, progress=False,
                                    features=FeatureOptions(self_attention=0.3, dense_cross=1.0))
    assert np.array_equal(pixels(outdir / "dense.png"), np.asarray(want[0].convert("RGB"), np.int16))
    assert "PwW self-attention: 0.3" in parameters(outdir / "dense.png")
    assert "PwW dense cross: 1.0" in parameters(outdir / "dense.png")
    assert "PwW guidance: 0.2" in parameters(outdir / "guided.png")
    assert "PwW self-attention" not in parameters(outdir / "plain.png")
    hashes = [r["hash"] for r in read_records(outdir / "manifest.jsonl")]
    assert len(set(hashes)) == 3


def test_approximation_fields_reach_the_library_and_the_hash(work, ckpt, capsys):
    pww = {"prompt": "a cat", "seed": 4, "steps": 3, "color_map": "map.png", "color_context": CONTEXT}
    bad = write_jobs(work, [{"id": "all", **pww, "tome": 1.0}, {"id": "neg", **pww, "deepcache": -1}])
    assert run(bad, work / "bad", ckpt) == 2
    err = capsys.readouterr().err
    assert "field 'tome'" in err and "[0, 1)" in err and "field 'deepcache'" in err
    jobs = [{"id": "exact", **pww}, {"id": "tome", **pww, "tome": 0.5},
            {"id": "cached", **pww, "deepcache": 2}, {"id": "branch", **pww, "deepcache_branch": 2}]
    path = write_jobs(work, jobs, {})
    assert run(path, work / "fast", ckpt, "--fast") == 2  # before the model loads (no compile)
    assert "need the eager UNet" in capsys.readouterr().err and not (work / "fast").exists()
    outdir = work / "out"
    assert run(path, outdir, ckpt) == 0
    model = pww_ldm.load_model(ckpt, device="cpu")
    for name, approx in (("tome", pww_ldm.Approximations(tome=0.5)),
                         ("cached", pww_ldm.Approximations(deepcache=2))):
        want = pww_ldm.paint_with_words(model, "a cat", Image.open(work / "map.png"), CONTEXT,
                                        steps=3, seed=4, progress=False, approx=approx)
        assert np.array_equal(pixels(outdir / f"{name}.png"), np.asarray(want[0].convert("RGB"), np.int16))
    assert "ToMe: 0.5" in parameters(outdir / "tome.png")
    assert "DeepCache: 2" in parameters(outdir / "cached.png")
    assert "ToMe" not in parameters(outdir / "exact.png")
    assert not np.array_equal(pixels(outdir / "tome.png"), pixels(outdir / "exact.png"))
    hashes = {r["id"]: r["hash"] for r in read_records(outdir / "manifest.jsonl")}
    # a branch without caching changes nothing, so it does not change the hash either
    assert hashes["branch"] == hashes["exact"] and len({hashes[k] for k in ("exact", "tome", "cached")}) == 3


def test_job_field_defaults_are_the_region_modules_defaults():
    """batch/fields.py and jobs.py spell the region defaults out (no torch import at validation):
    they must stay the library's."""
    from pww_ldm.batch.fields import FIELDS
    from pww_ldm.batch.jobs import Job
    from pww_ldm.region.region_prompts import DEFAULT_BIAS_TOKENS, DEFAULT_COVER

    defaults = {f.name: f.default for f in dataclasses.fields(Job)}
    for name, value in (("region_cover", DEFAULT_COVER), ("region_bias_tokens", DEFAULT_BIAS_TOKENS)):
        assert FIELDS[name][1] == value and defaults[name] == value
