"""The colour-context language: reference strings, records, JSON/YAML, and their errors."""

import json

import pytest

from pww_ldm.region import (
    ColorContextSyntaxError,
    Region,
    RegionError,
    load_color_context,
    parse_color,
    parse_color_context,
)
from pww_ldm.region.parse import parse_region_string

BLACK = (0, 0, 0)


@pytest.mark.parametrize(
    "text, label, weight, seed, blur",
    [
        ("cat,1.0", "cat", 1.0, None, 0.0),
        ("cat", "cat", 1.0, None, 0.0),  # bare label: weight 1
        ("a cat, sleeping,1.5", "a cat, sleeping", 1.5, None, 0.0),  # commas in the label
        ("boat,2,2077", "boat", 2.0, 2077, 0.0),  # weight 2, seed 2077
        ("boat,2,-1", "boat", 2.0, None, 0.0),  # seed -1 follows the global seed
        ("boat, 0.5 , 7, 3.5", "boat", 0.5, 7, 3.5),  # seed and blur sigma, spaces tolerated
        ("sky,-1.5", "sky", -1.5, None, 0.0),  # negative weight: suppression
        ("1984,2", "1984", 2.0, None, 0.0),  # a numeric label keeps its one field
        ("x, y, z, 1, 2, 3, 4", "x, y, z, 1", 2.0, 3, 4.0),  # at most 3 trailing numbers
        ("road to inf,1e-1", "road to inf", 0.1, None, 0.0),  # "inf" is a word, not a number
    ],
)
def test_reference_strings(text, label, weight, seed, blur) -> None:
    region = parse_region_string(BLACK, text)
    assert (region.label, region.weight, region.seed, region.blur) == (label, weight, seed, blur)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (" ,1.0", "empty label"),
        ("cat,1,2.5", "seed"),  # seed must be an integer
        ("cat,1,-3", "seed"),
        ("cat,1,2,-1", "blur"),  # negative blur
    ],
)
def test_bad_reference_strings(text, match) -> None:
    with pytest.raises(ColorContextSyntaxError, match=match) as info:
        parse_region_string(BLACK, text)
    assert isinstance(info.value, RegionError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "color, rgb",
    [
        ((1, 2, 3), (1, 2, 3)),
        ([255, 0, 16], (255, 0, 16)),
        ("#ff0010", (255, 0, 16)),
        ("#FF0010", (255, 0, 16)),
        ("#f01", (255, 0, 17)),
        ("255,0,16", (255, 0, 16)),
        ("(255, 0, 16)", (255, 0, 16)),
    ],
)
def test_colors(color, rgb) -> None:
    assert parse_color(color) == rgb


@pytest.mark.parametrize(
    "color", ["#ff00", "#gg0000", "red", (1, 2), (0, 0, 256), (-1, 0, 0), (1.5, 0, 0), None]
)
def test_bad_colors(color) -> None:
    with pytest.raises(ColorContextSyntaxError, match="expected \\(r, g, b\\)"):
        parse_color(color)


def test_reference_dict_form() -> None:
    regions = parse_color_context({(0, 0, 0): "cat,1.0", "#ffffff": "dog,0.5,42,2"})
    assert regions == [
        Region((0, 0, 0), "cat", 1.0),
        Region((255, 255, 255), "dog", 0.5, seed=42, blur=2.0),
    ]


def test_records_json_yaml_agree(tmp_path) -> None:
    records = [
        {"color": "#ff0000", "label": "a squirrel", "weight": 1.5, "occurrence": 2},
        {"color": [0, 0, 255], "label": "sky", "weight": -1, "seed": 7, "blur": 4},
        {"color": "#00ff00", "label": "grass"},
    ]
    expected = [
        Region((255, 0, 0), "a squirrel", 1.5, occurrence=2),
        Region((0, 0, 255), "sky", -1.0, seed=7, blur=4.0),
        Region((0, 255, 0), "grass", 1.0),
    ]
    assert parse_color_context(records) == expected
    assert load_color_context(json.dumps(records)) == expected
    (tmp_path / "c.json").write_text(json.dumps(records))
    assert load_color_context(str(tmp_path / "c.json")) == expected
    yaml_text = """
- {color: "#ff0000", label: a squirrel, weight: 1.5, occurrence: 2}
- color: [0, 0, 255]
  label: sky
  weight: -1
  seed: 7
  blur: 4
- {color: "#00ff00", label: grass}
"""
    (tmp_path / "c.yaml").write_text(yaml_text)
    assert load_color_context(tmp_path / "c.yaml") == expected
    assert load_color_context(yaml_text) == expected


def test_dict_form_in_json_and_yaml() -> None:
    expected = [Region((0, 0, 0), "a cat, sleeping", 1.5), Region((255, 255, 255), "dog", 1.0)]
    assert (
        load_color_context('{"#000000": "a cat, sleeping,1.5", "255,255,255": "dog"}') == expected
    )
    assert load_color_context('"#000000": "a cat, sleeping,1.5"\n"255,255,255": dog\n') == expected
    # A record as the dict value.
    assert parse_color_context({"#000": {"label": "cat", "seed": 3}}) == [
        Region((0, 0, 0), "cat", 1.0, seed=3)
    ]


def test_empty_contexts() -> None:
    assert parse_color_context(None) == []
    assert parse_color_context({}) == []
    assert parse_color_context([]) == []
    assert load_color_context("[]") == []


@pytest.mark.parametrize(
    "context, match",
    [
        ([{"color": "#000000"}], "missing 'label'"),
        ([{"label": "cat"}], "missing 'color'"),
        ([{"color": "#000000", "label": "cat", "wieght": 2}], "unknown keys \\['wieght'\\]"),
        ([{"color": "#000000", "label": "cat", "weight": "heavy"}], "weight must be a finite"),
        ([{"color": "#000000", "label": "cat", "weight": float("nan")}], "finite"),
        ([{"color": "#000000", "label": "cat", "occurrence": 0}], "occurrence"),
        ([{"color": "#000000", "label": ""}], "label must be a non-empty"),
        (["cat,1.0"], "expected a record"),
        (42, "expected a dict"),
        ("#ffffff: cat,1.0", "quote"),  # YAML: an unquoted # starts a comment -> empty document
        ("{not json: [", "neither valid JSON nor YAML"),
        ("missing.json", "does not exist"),
    ],
)
def test_bad_contexts(context, match) -> None:
    with pytest.raises(ColorContextSyntaxError, match=match):
        parse_color_context(context)


def test_bad_json_file_reports_json_error(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"color": "#000000", "label": "cat",}]')
    with pytest.raises(ColorContextSyntaxError, match="invalid JSON"):
        load_color_context(str(path))
