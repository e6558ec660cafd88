"""The page's values -> Request without a server: modes, the inpaint tab's mask, region prompts in
the table and legend, and the table update after a map read (the label race)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pww_ldm.models.tokenizer import get_tokenizer
from pww_ldm.webui import inputs, regions
from pww_ldm.webui.events import GEN_IN, OUT, UI
from pww_ldm.webui.pngmeta import SETTINGS

RED = (220, 30, 30)


def _map(width: int = 16, height: int = 16) -> np.ndarray:
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    rgb[4:12, 4:12] = RED
    return rgb


def _values(**changes):
    rgb = _map()
    values = dict(model="m", prompt="a red circle", negative_prompt="",
                  editor={"background": rgb, "layers": [], "composite": rgb}, extra_colors=[],
                  table=[["#dc1e1e", "red circle", "", "", 1.0, -1, 0.0, 0.0, 0]], sampler="Euler a",
                  steps=4, cfg_scale=7.5, seed=3, width=16, height=16, batch_size=1,
                  weight_function="std", weight_scale=8.0, init_image=None, strength=0.6,
                  compare=True, keep_seed=True, mode="txt2img", self_attention=0.0,
                  inpaint_editor=None, mask_upload=None, mask_blur=4, invert_mask=False,
                  only_masked=False, only_masked_padding=32, inpaint_strength=0.75,
                  attention_guidance=0.0, base_ratio=1.0, tome=0.0, deepcache=0, deepcache_branch=1)
    assert set(values) == set(GEN_IN)  # the page sends exactly these
    values.update(changes)
    return values


def _inpaint_editor(width: int = 24, height: int = 16, stroke: tuple = (slice(2, 6), slice(3, 9))):
    image = np.zeros((height, width, 4), dtype=np.uint8)
    image[..., 1], image[..., 3] = 128, 255  # opaque green
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    layer[stroke] = (255, 0, 255, 255)  # the brush's colour does not matter, its alpha does
    return {"background": image, "layers": [layer], "composite": image}


def test_inpaint_request_takes_the_strokes_alpha_as_mask_and_the_background_as_image():
    req = inputs.build_request(_values(mode="inpaint", inpaint_editor=_inpaint_editor(),
                                       mask_blur=2, only_masked=True, only_masked_padding=8,
                                       inpaint_strength=0.9))
    assert req.mode == "inpaint" and req.strength == 0.9 and req.init_image.size == (24, 16)
    assert np.asarray(req.init_image)[0, 0].tolist() == [0, 128, 0]
    mask = np.asarray(req.mask)
    expected = np.zeros((16, 24), dtype=np.uint8)
    expected[2:6, 3:9] = 255
    assert (mask == expected).all()
    assert req.inpaint_options() == dict(mask_image=req.mask, mask_blur=2.0, invert_mask=False,
                                         only_masked=True, only_masked_padding=8)
    assert req.settings(5)["inpaint_strength"] == 0.9 and req.settings(5)["strength"] is None
    assert set(req.settings(5)) <= set(SETTINGS) and set(SETTINGS) <= set(OUT)


def test_an_uploaded_mask_replaces_the_strokes_and_must_have_the_image_size(tmp_path):
    mask = np.zeros((16, 24), dtype=np.uint8)
    mask[8:, :] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    req = inputs.build_request(_values(mode="inpaint", inpaint_editor=_inpaint_editor(),
                                       mask_upload=str(path)))
    assert (np.asarray(req.mask) == mask).all()
    Image.fromarray(mask).resize((12, 8)).save(path)
    with pytest.raises(inputs.InpaintInputError, match="mask is 12x8 px, the image 24x16 px"):
        inputs.build_request(_values(mode="inpaint", inpaint_editor=_inpaint_editor(),
                                     mask_upload=str(path)))


@pytest.mark.parametrize("changes, message", [
    (dict(mode="inpaint"), "upload the image to repaint"),
    (dict(mode="inpaint", inpaint_editor={**_inpaint_editor(), "layers": []}), "no mask; paint"),
    (dict(mode="inpaint", inpaint_editor=_inpaint_editor(stroke=(slice(0, 16), slice(0, 24))),
          invert_mask=True), "black everywhere"),
    (dict(mode="inpaint", inpaint_editor=_inpaint_editor(), mask_blur=-1), "must be >= 0"),
    (dict(mode="img2img"), "upload an init image"),
    (dict(mode="outpaint"), "mode 'outpaint'"),
    (dict(self_attention=-0.3), "self-attention -0.3"),
    (dict(attention_guidance=-0.5), "attention guidance -0.5: must be >= 0 \\(0 = off\\)"),
    (dict(attention_guidance=float("nan")), "attention guidance nan: must be >= 0"),
    (dict(base_ratio=1.5), "base ratio 1.5: choose 0 to 1"),
    (dict(base_ratio=float("nan")), "base ratio nan: choose 0 to 1"),
    (dict(table=[["#dc1e1e", "", "", "blurry", 1.0, -1, 0.0, 0.0, 0]]), "needs the region's own prompt"),
    (dict(table=[["#1e3cdc", "", "a blue box", "", 1.0, -1, 0.0, 0.0, 0]]),
     "#1e3cdc of region 'a blue box' is not in the colour map"),
])
def test_bad_mode_inputs_say_what_to_do(changes, message):
    with pytest.raises(ValueError, match=message):
        inputs.build_request(_values(**changes))


def test_a_mask_upload_that_is_not_an_image_is_a_message(tmp_path):
    path = tmp_path / "mask.png"
    path.write_text("not a png")
    with pytest.raises(ValueError, match="not an image"):
        inputs.build_request(_values(mode="inpaint", inpaint_editor=_inpaint_editor(),
                                     mask_upload=str(path)))


def test_img2img_self_attention_and_guidance_reach_the_request(tmp_path):
    path = tmp_path / "init.png"
    Image.new("RGB", (20, 12), (1, 2, 3)).save(path)
    req = inputs.build_request(_values(mode="img2img", init_image=str(path), strength=0.4,
                                       self_attention=0.3, attention_guidance=0.5))
    assert req.init_image.size == (20, 12) and req.strength == 0.4 and req.mask is None
    assert req.inpaint_options() == {} and req.self_attention == 0.3
    assert req.attention_guidance == 0.5 and req.settings(1)["attention_guidance"] == 0.5
    assert inputs.build_request(_values(attention_guidance=None)).attention_guidance == 0.0  # empty box
    assert req.base_ratio == 1.0 and inputs.build_request(_values(base_ratio=None)).base_ratio == 1.0
    based = inputs.build_request(_values(base_ratio=0.0))
    assert based.base_ratio == 0.0 and based.settings(1)["base_ratio"] == 0.0
    assert req.settings(1)["strength"] == 0.4 and "mask_blur" not in req.settings(1)


def test_legend_accepts_a_row_with_only_its_own_prompt_and_flags_long_ones():
    tok = get_tokenizer()
    shares = {"#dc1e1e": 0.5, "#1e3cdc": 0.5}
    rows = [["#dc1e1e", "", "a fluffy cat", "", 1, -1, 0, 0, 0],
            ["#1e3cdc", "", " ".join(["dog"] * 76), "", 1, -1, 0, 0, 0]]
    problems = regions.label_problems("a red circle", rows, tok, shares)
    assert set(problems) == {"#1e3cdc"} and "76 tokens; at most 75" in problems["#1e3cdc"]
    report = regions.label_report("a red circle", rows, tok, shares)
    assert "own prompt &laquo;a fluffy cat&raquo;" in report


def _ui() -> UI:
    return UI(worker=None, start={}, tokenizer=get_tokenizer())


def test_after_a_map_read_the_table_keeps_labels_typed_meanwhile():
    ui, qmap = _ui(), _map()
    _, colors = ui.on_read({"background": qmap, "layers": [], "composite": qmap}, [], 16, 16)
    assert colors == ["#ffffff", "#dc1e1e"]  # most pixels first: 192 white, 64 red
    # the table as the page holds it when the read is done: a label typed during the read
    typed = [["#ffffff", "sky", "", "", 1.0, -1, 0.0, 0.0, 0]]
    table, legend = ui.on_colors(colors, typed, "a red circle under the sky", qmap)
    assert table == [typed[0], ["#dc1e1e", "", "", "", 1.0, -1, 0.0, 0.0, 0]]
    assert "&#10003; sky" in legend
    # same colours: the table is not sent at all, so a cell being edited is left alone
    same, _ = ui.on_colors(colors, table, "a red circle under the sky", qmap)
    assert same == {"__type__": "update"}  # gr.skip(): an update that changes nothing


def test_download_files_follow_the_table_and_a_bad_table_offers_none(tmp_path):
    ui = _ui()
    rows = [["#dc1e1e", "cat", "a ginger cat", "", 1.5, -1, 0.0, 0.0, 0]]
    json_path, yaml_path = ui.on_export(rows)
    expected = [{"color": "#dc1e1e", "label": "cat", "prompt": "a ginger cat", "weight": 1.5, "seed": None,
                 "blur": 0.0, "outside": 0.0, "occurrence": None}]
    assert json.loads(Path(json_path).read_text()) == expected
    assert yaml.safe_load(Path(yaml_path).read_text()) == expected
    assert ui.on_export([list(r) for r in rows])[0] == json_path  # same table, same file
    changed = ui.on_export([["#dc1e1e", "dog", "", "", 1.0, -1, 0.0, 0.0, 0]])[0]
    assert changed != json_path and json.loads(Path(changed).read_text())[0]["label"] == "dog"
    assert ui.on_export([["#dc1e1e", "cat", "", "", "heavy", -1, 0, 0, 0]]) == (None, None)
