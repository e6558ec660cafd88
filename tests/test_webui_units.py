"""Web UI logic without a server: quantisation, fill, the region table round trip, PNG reopen."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pww_ldm.images import save_png
from pww_ldm.models.tokenizer import get_tokenizer
from pww_ldm.webui import handlers, palette, pngmeta, regions

RED, BLUE, WHITE = (220, 30, 30), (30, 60, 220), (255, 255, 255)


def test_quantize_snaps_antialiased_edges_to_the_nearest_palette_colour():
    pal = np.array([WHITE, RED, BLUE], dtype=np.uint8)
    # A 50/50 red-white blend is nearer red (distance^2 0+50625... computed below) than white.
    blend = tuple((np.array(RED) + np.array(WHITE)) // 2)  # (237, 142, 142)
    d_red = sum((a - b) ** 2 for a, b in zip(blend, RED))  # 17^2 + 112^2 + 112^2 = 25377
    d_white = sum((a - b) ** 2 for a, b in zip(blend, WHITE))  # 18^2 + 113^2 + 113^2 = 25862
    assert d_red < d_white
    rgb = np.array([[RED, blend], [(250, 250, 250), (40, 60, 200)]], dtype=np.uint8)
    out = palette.quantize(rgb, pal)
    assert out.tolist() == [[list(RED), list(RED)], [list(WHITE), list(BLUE)]]


def test_flatten_composites_alpha_over_white():
    rgba = np.array([[[200, 0, 0, 255], [200, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    # 128/255 of black over white: 255 * (1 - 128/255) = 127
    assert palette.flatten(rgba).tolist() == [[[200, 0, 0], [255, 255, 255], [127, 127, 127]]]


def test_flood_fill_stays_inside_the_4_connected_area():
    rgb = np.zeros((5, 5, 3), dtype=np.uint8)
    rgb[:, 2] = 255  # a white wall splits the black into two halves
    out = palette.flood_fill(rgb, 0, 4, (1, 2, 3))
    assert (out[:, :2] == (1, 2, 3)).all()  # the whole left half, around no corner
    assert (out[:, 2] == 255).all() and (out[:, 3:] == 0).all()
    spiral = np.zeros((4, 4, 3), dtype=np.uint8)
    spiral[1, 1:] = 255
    spiral[2:, 1] = 255  # an L-shaped path of black with two turns: (0,0)->(0,3), (2..3, 2..3)
    filled = palette.flood_fill(spiral, 0, 3, (9, 9, 9))[..., 0]
    expected = np.array([[9, 9, 9, 9], [9, 255, 255, 255], [9, 255, 0, 0], [9, 255, 0, 0]])
    assert filled.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="outside"):
        palette.flood_fill(rgb, 5, 0, (0, 0, 0))


def test_fit_map_resizes_with_nearest_and_keeps_colours():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = RED
    out = palette.fit_map(Image.fromarray(rgb), 8, 8)
    assert out.shape == (8, 8, 3)
    assert (out[:4, :4] == RED).all() and (out[4:, 4:] == 0).all()
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 2  # no blend appeared


def test_color_shares_and_upload_palette():
    rgb = np.full((10, 20, 3), 255, dtype=np.uint8)
    rgb[:5, :4] = RED  # 20 of 200 px
    rgb[0, 19] = BLUE  # 1 px: 0.5 %, the threshold
    assert palette.color_shares(rgb) == [("#ffffff", 179 / 200), ("#dc1e1e", 0.1), ("#1e3cdc", 0.005)]
    assert palette.upload_palette(rgb) == ["#ffffff", "#dc1e1e", "#1e3cdc"]


def test_region_table_round_trips_through_json_and_yaml():
    rows = [["#ffffff", "", "", "", 1.0, -1, 0.0, 0.0, 0],
            ["#dc1e1e", "red circle", "", "", 1.5, 7, 2.0, -0.5, 2],
            ["#1e3cdc", "blue square", "a small blue box", "blurry", 1.0, -1, 0.0, 0.0, 0],
            ["#1eb43c", "", "a green tree", "", 0.5, -1, 0.0, 0.0, 0]]
    records = regions.records_from_rows(rows)
    assert records[0] == {"color": "#dc1e1e", "label": "red circle", "weight": 1.5, "seed": 7,
                          "blur": 2.0, "outside": -0.5, "occurrence": 2}
    assert records[1]["seed"] is None and records[1]["occurrence"] is None
    # a region's own prompt and negative prompt under the engine's key names; a row with only a
    # prompt has no label key (the engine reads "" as a bad label)
    assert (records[1]["prompt"], records[1]["negative_prompt"]) == ("a small blue box", "blurry")
    assert records[2]["prompt"] == "a green tree" and "label" not in records[2]
    assert "negative_prompt" not in records[2]
    for fmt in ("json", "yaml"):
        back = regions.rows_from_regions(regions.loads(regions.dumps(records, fmt)))
        assert back == rows[1:]


def test_table_keeps_typed_labels_and_merges_uploads():
    previous = [["#dc1e1e", "red circle", "", "", 2.0, -1, 0.0, 0.0, 0],
                ["#000000", "cat", "", "", 1.0, -1, 0, 0, 0]]
    # rows keep their place (a row being typed in never moves); new colours come after; black,
    # gone from the map, is dropped
    table = regions.table_for_map(["#ffffff", "#dc1e1e"], previous)
    assert table == [["#dc1e1e", "red circle", "", "", 2.0, -1, 0.0, 0.0, 0],
                     ["#ffffff", "", "", "", 1.0, -1, 0.0, 0.0, 0]]
    uploaded = regions.rows_from_regions(regions.loads('{"#ffffff": "sky,0.5", "#00ff00": "tree"}'))
    merged = regions.merge_uploaded(table, uploaded)
    assert merged[1] == ["#ffffff", "sky", "", "", 0.5, -1, 0.0, 0.0, 0]
    assert merged[2][:2] == ["#00ff00", "tree"]


@pytest.mark.parametrize("row, message", [
    (["#dc1e1e", "cat", "", "", "heavy", -1, 0, 0, 0], "row 1 \\(weight\\): 'heavy' is not a number"),
    (["#dc1e1e", "cat", "", "", 1, 1.5, 0, 0, 0], "row 1 \\(seed\\).*whole number"),
    (["#dc1e1e", "cat", "", "", 1, -1, -2, 0, 0], "row 1: .*blur must be >= 0"),
    (["red", "cat", "", "", 1, -1, 0, 0, 0], "row 1: bad colour"),
    (["#dc1e1e", "cat", "", "blurry", 1, -1, 0, 0, 0], "row 1: .*negative_prompt needs the region's own"),
    (["#dc1e1e", "cat", 1, -1, 0, 0, 0], "row 1 has 7 cells"),
])
def test_bad_rows_name_the_row_and_the_field(row, message):
    with pytest.raises(regions.RegionTableError, match=message):
        regions.records_from_rows([row])


def test_bad_uploaded_region_files_give_a_message():
    for text in ("{not json", "[]", '[{"color": "#ff0000"}]'):
        with pytest.raises(regions.RegionTableError, match="region file"):
            regions.loads(text)


def test_labels_not_in_the_prompt_are_flagged_before_anything_runs():
    rows = [["#dc1e1e", "red circle", "", "", 1, -1, 0, 0, 0], ["#1e3cdc", "cat", "", "", 1, -1, 0, 0, 0],
            ["#00ff00", "blue", "", "", 1, -1, 0, 0, 0]]
    shares = {"#dc1e1e": 0.5, "#1e3cdc": 0.5}
    problems = regions.label_problems("a red circle and a blue square", rows, get_tokenizer(), shares)
    assert set(problems) == {"#1e3cdc", "#00ff00"}
    assert "not in the prompt" in problems["#1e3cdc"]
    assert problems["#00ff00"] == "this colour is not in the map"
    report = regions.label_report("a red circle", rows, get_tokenizer(), shares)
    assert "1:a" in report and "2:red" in report and "3:circle" in report
    assert "<code>#dc1e1e</code> 50.0%" in report


def _png(tmp_path, rgb_map, records):
    chunk = pngmeta.pww_chunk("a red circle", "blurry",
                              {"sampler": "DDIM", "steps": 12, "cfg_scale": 5.0, "seed": 1234,
                               "width": 16, "height": 8, "batch_size": 1, "weight_function": "max",
                               "weight_scale": 0.4, "strength": None}, records, rgb_map)
    image = Image.new("RGB", (16, 8), "gray")
    return save_png(image, tmp_path / "out.png", "a red circle\nSteps: 12, Seed: 1234, Size: 16x8",
                    {"pww": chunk})


def test_png_reopen_gives_back_settings_regions_and_the_exact_map(tmp_path):
    rgb_map = np.full((8, 16, 3), 255, dtype=np.uint8)
    rgb_map[2:5, 3:9] = RED
    records = [{"color": "#dc1e1e", "label": "red circle", "weight": 1.0, "seed": None, "blur": 0.0,
                "outside": 0.0, "occurrence": None}]
    meta = handlers.reopen(_png(tmp_path, rgb_map, records))
    assert meta["prompt"] == "a red circle" and meta["negative_prompt"] == "blurry"
    assert meta["settings"]["seed"] == 1234 and meta["settings"]["sampler"] == "DDIM"
    assert (meta["map"] == rgb_map).all()
    assert meta["rows"] == [["#ffffff", "", "", "", 1.0, -1, 0.0, 0.0, 0],  # most pixels first
                            ["#dc1e1e", "red circle", "", "", 1.0, -1, 0.0, 0.0, 0]]
    assert handlers.shares_of(meta["map"]) == {"#ffffff": 110 / 128, "#dc1e1e": 18 / 128}  # 3 x 6 px


def test_png_reopen_reads_a1111_parameters_without_a_pww_chunk():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, "
                  "CFG scale: 7, Seed: 5, Size: 512x768, Mask blur: 6, Masked area padding: 16")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    meta = pngmeta.read_png(buffer.getvalue())
    assert meta["prompt"] == "a cat" and meta["negative_prompt"] == "dog"
    assert meta["settings"] == {"steps": 20, "sampler": "Euler a", "cfg_scale": 7.0, "seed": 5,
                                "width": 512, "height": 768, "mask_blur": 6.0, "only_masked_padding": 16}


def test_guidance_and_base_ratio_come_back_on_reopen_from_either_chunk(tmp_path):
    from pww_ldm.webui.events import OUT, UI

    info = PngImagePlugin.PngInfo()  # parameters only, as the engine writes them: "PwW guidance: <v>"
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 5, Size: 64x64, PwW guidance: 0.5, "
                  "PwW guidance window: 0.3, PwW base ratio: 0.2")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    settings = pngmeta.read_png(buffer.getvalue())["settings"]
    assert settings["attention_guidance"] == 0.5 and settings["base_ratio"] == 0.2
    rgb_map = np.full((8, 16, 3), 255, dtype=np.uint8)
    rgb_map[2:5, 3:9] = RED
    chunk = pngmeta.pww_chunk("a red circle", "", {"steps": 4, "attention_guidance": 0.25, "base_ratio": 0.0},
                              [{"color": "#dc1e1e", "label": "red circle"}], rgb_map)
    path = save_png(Image.new("RGB", (16, 8)), tmp_path / "g.png",
                    "a red circle\nSteps: 4, PwW guidance: 0.25", {"pww": chunk})
    fields = UI(worker=None, start={}, tokenizer=get_tokenizer()).on_reopen(str(path))
    assert fields[OUT.index("attention_guidance")] == 0.25 and fields[OUT.index("steps")] == 4
    assert fields[OUT.index("base_ratio")] == 0.0


def test_png_reopen_rejects_other_files():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    with pytest.raises(pngmeta.ReopenError, match="JPEG"):
        pngmeta.read_png(buffer.getvalue())
    with pytest.raises(pngmeta.ReopenError, match="not a readable image"):
        pngmeta.read_png(b"hello")
    plain = io.BytesIO()
    Image.new("RGB", (4, 4)).save(plain, format="PNG")
    with pytest.raises(pngmeta.ReopenError, match="no generation settings"):
        pngmeta.read_png(plain.getvalue())
    damaged = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("pww", json.dumps({"version": 1, "map": "!!"}))
    Image.new("RGB", (4, 4)).save(damaged, format="PNG", pnginfo=info)
    with pytest.raises(pngmeta.ReopenError, match="damaged"):
        pngmeta.read_png(damaged.getvalue())


def test_uploads_are_limited_in_pixels_and_must_be_images(tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (4097, 4096)).save(big)
    with pytest.raises(handlers.UploadError, match="at most 4096x4096"):
        handlers.upload_map(big, 64, 64)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(handlers.UploadError, match="not an image"):
        handlers.upload_map(text, 64, 64)


def test_server_options_warn_on_open_host_and_check_auth():
    from pww_ldm.webui.server import ServerUsageError, check_host, parse_auth

    with pytest.warns(UserWarning, match="--auth"):
        check_host("0.0.0.0", None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_host("127.0.0.1", None)
        check_host("0.0.0.0", ("u", "p"))
    assert parse_auth("ann:s3:cret") == ("ann", "s3:cret")
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(ServerUsageError, match="user:password"):
            parse_auth(bad)
