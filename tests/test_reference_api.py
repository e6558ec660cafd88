"""pww_ldm.reference: the Python API of cloneofsimo/paint-with-words-sd, drop-in.

The reference README's examples run below as written, with only the import line changed and
`local_model_path` pointed at the bundled demo model (the first example gives no path: the demo
model is the default). The `dotenv` lines are left out (they only load a hub token). The
README's 512x512 map (contents/example_input.png, not shipped) is replaced by a 128x128 map
(the demo model's native size) of the same five colours, written to the same relative path.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pww_ldm
from pww_ldm import reference
from pww_ldm.checkpoint import NotACheckpointError
from pww_ldm.reference import paint_with_words, pww_load_tools
from pww_ldm.region import ColorContextSyntaxError, LabelNotInPromptError
from pww_ldm.samplers.errors import InvalidStepsError
from pww_ldm.samplers.registry import get_sampler

DEMO = Path(__file__).absolute().parent.parent / "models" / "pww-demo" / "model.safetensors"
# AUTOMATIC1111's own parser of the `parameters` settings line (modules/generation_parameters_copypaste).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
PROMPT = "realistic photo of a dog, cat, tree, with beautiful sky, on sandy ground"
COLOR_CONTEXT = {
    (0, 0, 0): "cat,1.0",
    (255, 255, 255): "dog,1.0",
    (13, 255, 0): "tree,1.5",
    (90, 206, 255): "sky,0.2",
    (74, 18, 1): "ground,0.2",
}


class LMSDiscreteScheduler:
    """Stands in for `from diffusers import LMSDiscreteScheduler`: only the class name is read."""


class DDIMScheduler:
    """Stands in for diffusers' DDIMScheduler."""


def _write_readme_map(path: Path) -> None:
    """The README example's colours in its layout: sky above, ground below, tree, dog and cat."""
    a = np.zeros((128, 128, 3), np.uint8)
    a[:48], a[48:] = (90, 206, 255), (74, 18, 1)
    a[40:100, 4:36] = (13, 255, 0)
    a[60:110, 40:80] = (255, 255, 255)
    a[70:112, 86:124] = (0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A working folder holding contents/example_input.png, as the README's paths expect."""
    _write_readme_map(tmp_path / "contents" / "example_input.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def demo_tools():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "cuda:0" on a CPU-only machine
        return pww_load_tools("cuda:0", scheduler_type="LMSDiscreteScheduler", local_model_path=DEMO)


def _cuda_fallback_warning():
    """The warning the README's device="cuda:0" gives where CUDA is missing."""
    if torch.cuda.is_available():
        return nullcontext()
    return pytest.warns(RuntimeWarning, match="cuda is not available: running on the CPU")


def _parameters(image: Image.Image) -> dict[str, str]:
    return dict(A1111_PARAM.findall(image.info["parameters"].splitlines()[-1]))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _readme_map() -> Image.Image:
    return Image.open("contents/example_input.png").convert("RGB")


@pytest.mark.slow
def test_readme_basic_usage(readme_dir, demo_tools):
    settings = {
        "color_context": {
            (0, 0, 0): "cat,1.0",
            (255, 255, 255): "dog,1.0",
            (13, 255, 0): "tree,1.5",
            (90, 206, 255): "sky,0.2",
            (74, 18, 1): "ground,0.2",
        },
        "color_map_img_path": "contents/example_input.png",
        "input_prompt": "realistic photo of a dog, cat, tree, with beautiful sky, on sandy ground",
        "output_img_path": "contents/output_cat_dog.png",
    }

    color_map_image = Image.open(settings["color_map_img_path"]).convert("RGB")
    color_context = settings["color_context"]
    input_prompt = settings["input_prompt"]

    with _cuda_fallback_warning():
        img = paint_with_words(
            color_context=color_context,
            color_map_image=color_map_image,
            input_prompt=input_prompt,
            num_inference_steps=30,
            guidance_scale=7.5,
            device="cuda:0",
        )

    img.save(settings["output_img_path"])

    assert isinstance(img, Image.Image) and img.size == (128, 128) and img.mode == "RGB"
    assert Image.open(readme_dir / "contents" / "output_cat_dog.png").size == (128, 128)
    params = _parameters(img)
    assert (params["Sampler"], params["Steps"], params["Seed"]) == ("LMS", "30", "0")
    assert params["PwW weight function"] == "max"
    # The reference's defaults: LMS, 0.1 * w * log(1 + sigma) * max(qk), bilinear masks, uncond "".
    expected = pww_ldm.paint_with_words(
        demo_tools.model, PROMPT, color_map_image, COLOR_CONTEXT, steps=30, guidance_scale=7.5,
        seed=0, sampler="lms", weight_function="max", weight_scale=0.1, resample="bilinear")[0]
    np.testing.assert_array_equal(_pixels(img), _pixels(expected))
    plain = paint_with_words(color_context={}, color_map_image=color_map_image,
                             input_prompt=input_prompt, preloaded_utils=demo_tools)
    # Measured 0.215 mean, 34 max: the demo model reacts weakly to the default 0.1 * max(qk).
    assert np.abs(_pixels(img) - _pixels(plain)).mean() > 0.05


@pytest.mark.slow
def test_readme_fine_tuned_model_example(readme_dir, demo_tools):
    color_map_image, color_context, input_prompt = _readme_map(), dict(COLOR_CONTEXT), PROMPT
    with _cuda_fallback_warning():
        loaded = pww_load_tools(
            "cuda:0",
            scheduler_type=LMSDiscreteScheduler,
            local_model_path=str(DEMO)
        )
    img = paint_with_words(
        color_context=color_context,
        color_map_image=color_map_image,
        input_prompt=input_prompt,
        num_inference_steps=30,
        guidance_scale=7.5,
        device="cuda:0",
        weight_function=lambda w, sigma, qk: 0.4 * w * math.log(1 + sigma) * qk.max(),
        preloaded_utils=loaded
    )

    assert img.size == (128, 128)
    params = _parameters(img)
    assert (params["Sampler"], params["PwW weight function"]) == ("LMS", "custom")
    # The lambda is the built-in "max" at 0.4: equal images prove it got the sampler's sigma
    # (math.log in float64 vs torch.log1p in float32: at most one level apart).
    builtin = pww_ldm.paint_with_words(
        demo_tools.model, PROMPT, color_map_image, COLOR_CONTEXT, steps=30, sampler="lms",
        weight_function="max", weight_scale=0.4, resample="bilinear")[0]
    assert np.abs(_pixels(img) - _pixels(builtin)).max() <= 1
    plain = paint_with_words(color_context={}, color_map_image=color_map_image,
                             input_prompt=input_prompt, preloaded_utils=loaded)
    assert np.abs(_pixels(img) - _pixels(plain)).mean() > 5  # measured 26.3


@pytest.mark.slow
def test_readme_weight_scaling_example(readme_dir, demo_tools):
    color_map_image, color_context, input_prompt, loaded = _readme_map(), COLOR_CONTEXT, PROMPT, demo_tools
    w_f = lambda w, sigma, qk: 0.4 * w * math.log(sigma**2 + 1) * qk.std()  # noqa: E731 (README's)

    img = paint_with_words(
        color_context=color_context,
        color_map_image=color_map_image,
        input_prompt=input_prompt,
        num_inference_steps=20,
        guidance_scale=7.5,
        device="cuda:0",
        preloaded_utils=loaded,
        weight_function=w_f
    )

    assert img.size == (128, 128) and _parameters(img)["Steps"] == "20"
    builtin = pww_ldm.paint_with_words(
        loaded.model, PROMPT, color_map_image, COLOR_CONTEXT, steps=20, sampler="lms",
        weight_function="log2_std", weight_scale=0.4, resample="bilinear")[0]
    assert np.abs(_pixels(img) - _pixels(builtin)).max() <= 1


def test_weight_function_gets_reference_shapes(readme_dir, demo_tools):
    calls = []

    def record(w, sigma, qk):
        calls.append((tuple(w.shape), sigma, tuple(qk.shape)))
        return 0.0 * w

    paint_with_words(color_context=COLOR_CONTEXT, color_map_image=_readme_map(), input_prompt=PROMPT,
                     num_inference_steps=2, weight_function=record, preloaded_utils=demo_tools)
    # 128 px -> latent 16x16; the demo UNet attends at 16x16 and 8x8 (attention_resolutions 1, 2)
    # and in its middle block at 4x4.
    assert {w for w, _, _ in calls} == {(256, 77), (64, 77), (16, 77)}
    assert all(len(qk) == 3 and qk[1:] == w for w, _, qk in calls)
    assert all(isinstance(s, torch.Tensor) and s.dim() == 0 for _, s, _ in calls)
    # The first step's sigma is the schedule's largest, sqrt((1 - abar) / abar) at t = 999.
    abar = demo_tools.model.alphas_cumprod[-1].double()
    assert math.isclose(float(calls[0][1]), math.sqrt((1 - abar) / abar), rel_tol=1e-4)
    assert float(calls[-1][1]) < float(calls[0][1])


EXPECTED_LABELS = {
    "LMSDiscreteScheduler": "LMS", "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a", "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2", "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverMultistepScheduler": "DPM++ 2M", "DPMSolverSinglestepScheduler": "DPM++ 2S a",
    "DPMSolverSDEScheduler": "DPM++ SDE", "DDIMScheduler": "DDIM", "PNDMScheduler": "PLMS",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_scheduler_name_maps_to_sampler(name):
    stand_in = type(name, (), {})
    for given in (name, name.lower(), stand_in, stand_in()):
        canonical, sampler, eta = reference.resolve_scheduler(given)
        assert canonical == name
        assert get_sampler(sampler).label == EXPECTED_LABELS[name]
    assert eta == (0.0 if name == "DPMSolverSinglestepScheduler" else None)


def test_our_sampler_names_pass_through():
    assert reference.resolve_scheduler("DPM++ 2M Karras")[1:] == ("dpmpp_2m_karras", None)


@pytest.mark.slow
def test_scheduler_selects_sampler_when_generating(readme_dir, demo_tools):
    def run(tools, **kwargs):
        return paint_with_words(color_context=COLOR_CONTEXT, color_map_image=_readme_map(),
                                input_prompt=PROMPT, num_inference_steps=6, preloaded_utils=tools,
                                **kwargs)

    lms, ddim = run(demo_tools), run(demo_tools.with_scheduler(DDIMScheduler))
    assert (_parameters(lms)["Sampler"], _parameters(ddim)["Sampler"]) == ("LMS", "DDIM")
    assert np.abs(_pixels(lms) - _pixels(ddim)).mean() > 1
    single = _parameters(run(demo_tools.with_scheduler("DPMSolverSinglestepScheduler")))
    assert (single["Sampler"], single["Eta"]) == ("DPM++ 2S a", "0.0")
    edited = _parameters(run(demo_tools, init_image=lms, strength=0.5))
    assert edited["Denoising strength"] == "0.5"


def test_readme_region_seeds(readme_dir, demo_tools):
    # The README's regional seeding: a 3rd field seeds the region's starting noise, -1 follows `seed`.
    def run(cat_seed):
        context = {color: text + ",-1" for color, text in COLOR_CONTEXT.items()}
        context[(0, 0, 0)] = f"cat,1.0,{cat_seed}"
        return paint_with_words(color_context=context, color_map_image=_readme_map(),
                                input_prompt=PROMPT, num_inference_steps=4, preloaded_utils=demo_tools)

    seeded, unseeded = run(2077), run(-1)
    regions = json.loads(json.loads(_parameters(seeded)["PwW regions"]))  # A1111-quoted JSON
    assert [r.get("seed") for r in regions] == [2077, None, None, None, None]
    assert "seed" not in json.loads(json.loads(_parameters(unseeded)["PwW regions"]))[0]
    assert np.abs(_pixels(seeded) - _pixels(unseeded)).max() > 0


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a checkpoint load is attempted: the errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the bad argument was reported")

    monkeypatch.setattr(reference, "load_model", refuse)


def test_unknown_scheduler_is_a_clear_error(no_loading):
    with pytest.raises(reference.UnknownSchedulerError, match="LMSDiscreteScheduler.*Euler a"):
        pww_load_tools("cpu", scheduler_type="UniPCMultistepScheduler", local_model_path=DEMO)
    with pytest.raises(reference.UnknownSchedulerError, match="'UniPCMultistepScheduler'"):
        paint_with_words(color_context={}, input_prompt="a cat", device="cpu",
                         scheduler_type="UniPCMultistepScheduler")


def test_hub_model_is_refused(no_loading):
    hub = "CompVis/stable-diffusion-v1-4"
    with pytest.raises(reference.HubModelError, match="never downloads.*local_model_path"):
        paint_with_words(color_context={}, input_prompt="a cat", device="cpu", hf_model_path=hub)
    with pytest.raises(reference.HubModelError, match=re.escape(repr(hub))):
        pww_load_tools("cpu", hf_model_path=hub, model_token="hf_xxx")
    # As in the reference, a local path wins over the hub id; with neither, the demo model.
    assert reference.resolve_model_path(DEMO, hub) == DEMO
    assert reference.resolve_model_path(None, None).resolve() == DEMO.resolve()


def test_diffusers_folder_is_refused(no_loading, tmp_path):
    with pytest.raises(NotACheckpointError, match=r"folder.*\.ckpt/\.safetensors file itself"):
        pww_load_tools("cpu", local_model_path=tmp_path)


def test_bad_input_is_reported_before_loading(no_loading, readme_dir):
    with pytest.raises(ColorContextSyntaxError, match="empty label"):
        paint_with_words(color_context={(0, 0, 0): ",1.0"}, input_prompt="a cat", device="cpu")
    with pytest.raises(LabelNotInPromptError, match="'horse'"):
        paint_with_words(color_context={(0, 0, 0): "horse,1.0"}, color_map_image=_readme_map(),
                         input_prompt=PROMPT, device="cpu")
    with pytest.raises(InvalidStepsError, match="steps must be an integer >= 1"):
        paint_with_words(color_context=COLOR_CONTEXT, color_map_image=_readme_map(),
                         input_prompt=PROMPT, num_inference_steps=0, device="cpu")


def test_preloaded_utils_must_come_from_pww_load_tools():
    with pytest.raises(TypeError, match="pww_load_tools"):
        paint_with_words(color_context={}, input_prompt="a cat", preloaded_utils=(None,) * 5)


def test_missing_cuda_falls_back_to_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="'cuda:0' asked for but cuda is not available"):
        assert reference.resolve_device("cuda:0") == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reference.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="bad device 'gpu0'"):
        reference.resolve_device("gpu0")
