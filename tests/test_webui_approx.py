"""The web UI's ToMe / DeepCache controls without a server: the page's values reach the pipeline
calls as approx= (None when off), bad values are refused before any model loads, and a web-UI
image names them in its PNG parameters and gives them back on reopen."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin
from test_webui_inputs import _values
from tiny import tiny_model

import pww_ldm
from pww_ldm.models.tokenizer import get_tokenizer
from pww_ldm.webui import pngmeta
from pww_ldm.webui.events import OUT, UI, user_errors
from pww_ldm.webui.worker import ModelPool, Worker

CALL = dict(request=SimpleNamespace(session_hash="test"), progress=lambda *a, **k: None)


def _ui(tmp_path: Path, loader) -> UI:
    pool = ModelPool({"m": tmp_path / "model.safetensors"}, loader)
    return UI(Worker(pool, tmp_path / "out"), start={}, tokenizer=get_tokenizer())


@pytest.fixture
def spied(tmp_path, monkeypatch):
    """A UI whose pipeline calls are spies: {"ui", "calls": [(function name, approx)]}."""
    calls = []

    def image() -> Image.Image:
        out = Image.new("RGB", (16, 16), "gray")
        out.info["parameters"] = "a red circle\nSteps: 4"
        return out

    def paint_with_words(model, prompt, color_map, regions, return_attention=False, **kw):
        calls.append(("paint_with_words", kw["approx"]))
        return ([image()], {}) if return_attention else [image()]

    def generate(model, prompt, **kw):
        calls.append(("generate", kw["approx"]))
        return [image()]

    monkeypatch.setattr(pww_ldm, "paint_with_words", paint_with_words)
    monkeypatch.setattr(pww_ldm, "generate", generate)
    return {"ui": _ui(tmp_path, lambda path, **kw: object()), "calls": calls}


def test_the_controls_reach_both_pipeline_calls_as_approximations(spied, tmp_path):
    # gradio's Number sends floats; the interval and branch arrive as ints
    spied["ui"].generate(**_values(tome=0.5, deepcache=3.0, deepcache_branch=2.0), **CALL)
    assert [name for name, _ in spied["calls"]] == ["paint_with_words", "generate"]  # compare on
    for _, approx in spied["calls"]:
        assert (approx.tome, approx.deepcache, approx.deepcache_branch) == (0.5, 3, 2)
        assert type(approx.deepcache) is int and type(approx.deepcache_branch) is int
    saved = tmp_path / "out" / "samples" / "00000.png"
    fields = UI(worker=None, start={}, tokenizer=get_tokenizer()).on_reopen(str(saved))
    assert [fields[OUT.index(k)] for k in ("tome", "deepcache", "deepcache_branch")] == [0.5, 3, 2]


@pytest.mark.parametrize("tome, deepcache, branch", [
    (0.0, 0, 1), (0.0, 1, 1),  # DeepCache 1 = every call runs the whole UNet: off
    (None, None, None),  # empty boxes
    (0.0, 1, 7),  # a branch without caching changes nothing
])
def test_all_off_passes_no_approximations(spied, tome, deepcache, branch):
    spied["ui"].generate(**_values(tome=tome, deepcache=deepcache, deepcache_branch=branch), **CALL)
    assert spied["calls"] == [("paint_with_words", None), ("generate", None)]


SCRIPTS = r" \(ToMe ratio / DeepCache interval / DeepCache branch\)"  # the scripts' message, then the fields


@pytest.mark.parametrize("changes, message", [
    (dict(tome=1.0), r"tome \(the merged fraction of tokens\) must be in \[0, 1\), got 1.0; try 0.5, "
                     r"or 0 for off" + SCRIPTS),
    (dict(tome=-0.25), r"must be in \[0, 1\), got -0.25; try 0.5, or 0 for off" + SCRIPTS),
    (dict(tome=float("nan")), r"must be in \[0, 1\), got nan"),
    (dict(deepcache=-2), "deepcache must be an integer >= 0, got -2; try 3, or 0 for off" + SCRIPTS),
    (dict(deepcache=2.5), "DeepCache interval must be a whole number, got 2.5"),
    (dict(deepcache=3, deepcache_branch=-1), "deepcache_branch must be an integer >= 0, got -1" + SCRIPTS),
])
def test_bad_values_are_a_message_before_any_model_loads(tmp_path, changes, message):
    def loader(path, **kw):
        raise AssertionError("the model was loaded for a request the page should refuse")

    ui = _ui(tmp_path, loader)
    with pytest.raises(gr.Error, match=message):
        user_errors(ui.generate)(**_values(**changes), **CALL)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _real_ui(tmp_path: Path, model) -> UI:
    return _ui(tmp_path, lambda path, **kw: model)


def test_web_ui_images_name_the_approximations_and_reopen_with_them(tmp_path, model):
    small = dict(width=32, height=32, steps=2, compare=False)
    ui = _real_ui(tmp_path, model)
    _, info, *_ = ui.generate(**_values(**small), **CALL)
    assert "ToMe" not in info and "DeepCache" not in info  # off: parameters as before
    _, info, *_ = ui.generate(**_values(tome=0.5, deepcache=3, **small), **CALL)
    saved = tmp_path / "out" / "samples" / "00001.png"
    parameters = Image.open(saved).info["parameters"]
    assert "ToMe: 0.5" in parameters and "DeepCache: 3 (branch 1)" in parameters
    assert "ToMe: 0.5" in info and "DeepCache: 3 (branch 1)" in info
    fields = ui.on_reopen(str(saved))  # from the pww chunk
    assert [fields[OUT.index(k)] for k in ("tome", "deepcache", "deepcache_branch")] == [0.5, 3, 1]
    only = PngImagePlugin.PngInfo()  # the parameters chunk alone, as another tool keeps it
    only.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.open(saved).save(buffer, format="PNG", pnginfo=only)
    settings = pngmeta.read_png(buffer.getvalue())["settings"]
    assert (settings["tome"], settings["deepcache"], settings["deepcache_branch"]) == (0.5, 3, 1)


def test_a_branch_too_deep_for_the_model_is_a_message_and_writes_nothing(tmp_path, model):
    ui = _real_ui(tmp_path, model)
    with pytest.raises(gr.Error, match="deepcache_branch 99 is too deep for this UNet"):
        user_errors(ui.generate)(**_values(deepcache=3, deepcache_branch=99, compare=False, steps=2,
                                           width=32, height=32), **CALL)
    assert not list((tmp_path / "out").glob("**/*.png"))


def test_reopen_reads_a1111s_token_merging_ratio():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 5, Size: 64x64, Token merging ratio: 0.3")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    settings = pngmeta.read_png(buffer.getvalue())["settings"]
    assert settings["tome"] == 0.3 and "deepcache" not in settings
