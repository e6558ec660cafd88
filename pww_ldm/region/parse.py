"""The colour-context language: which colour of the map paints which words, how strongly.

Two forms, both giving a list of `Region`:

- the reference (paint-with-words-sd) dict
  ``{(r, g, b) or "#rrggbb": "label,weight[,seed[,blur]]"}``;
  the LAST comma-separated fields that are numbers are the options, so labels may contain commas
  ("a cat, sleeping,1.5" -> label "a cat, sleeping", weight 1.5) and a bare label means weight 1;
- a list of records ``{"color": "#rrggbb", "label": ..., "weight": 1.0, "seed": null, "blur": 0,
  "occurrence": null, "outside": 0}``, the form for JSON / YAML files. A record may carry the
  region's own text, ``"prompt": "a fluffy ginger cat, sleeping"`` (and ``"negative_prompt"``),
  instead of or besides a label of the global prompt (see `region.region_prompts`).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ColorContextSyntaxError

Color = tuple[int, int, int]

STRING_FORM = '"label,weight" or "label,weight,seed" or "label,weight,seed,blur_sigma"'
RECORD_KEYS = ("color", "label", "weight", "seed", "blur", "occurrence", "outside", "prompt",
               "negative_prompt")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_RGB_TEXT = re.compile(r"\(?\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)?")


@dataclass(frozen=True)
class Region:
    """One painted region: a colour of the map bound to a phrase of the prompt.

    color: (r, g, b) of the map. label: the phrase. weight: signed strength (negative suppresses).
    seed: initial-noise seed inside the region, None = the global seed. blur: Gaussian sigma in
    pixels applied to the mask (0 = hard edges). occurrence: 1-based occurrence of the label in the
    prompt, None = all. outside: weight of the label everywhere the region does NOT paint
    (negative keeps the thing out of the rest of the image; 0 = no effect).
    token_positions: filled by RegionContext, one tuple per image of 1-based
    positions in the 77-token sequence (BOS is 0). mask: filled by RegionContext, (H, W) float in
    [0, 1] at image resolution, blur applied. prompt / negative_prompt: the region's own text
    (None = none); a region with a prompt may have an empty label (it then paints no word of the
    global prompt).
    """

    color: Color
    label: str
    weight: float = 1.0
    seed: int | None = None
    blur: float = 0.0
    occurrence: int | None = None
    outside: float = 0.0
    token_positions: tuple[tuple[int, ...], ...] = ()
    mask: torch.Tensor | None = field(default=None, compare=False, repr=False)
    prompt: str | None = None
    negative_prompt: str | None = None


def parse_color(color: Any) -> Color:
    """(r, g, b) from a tuple/list of 3 ints, "#rrggbb", "#rgb" or "r,g,b" / "(r, g, b)"."""
    value = color
    if isinstance(color, str):
        text = color.strip()
        hex_digits = text[1:] if len(text) == 7 else "".join(c * 2 for c in text[1:])
        is_hex = re.fullmatch(r"[0-9a-fA-F]{6}", hex_digits)
        if text.startswith("#") and len(text) in (4, 7) and is_hex:
            return int(hex_digits[0:2], 16), int(hex_digits[2:4], 16), int(hex_digits[4:6], 16)
        m = _RGB_TEXT.fullmatch(text)
        value = tuple(int(g) for g in m.groups()) if m else None
    if isinstance(value, (tuple, list)) and len(value) == 3:
        try:
            rgb = tuple(operator.index(c) for c in value)
        except TypeError:
            rgb = ()
        if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb):
            return rgb  # type: ignore[return-value]
    raise ColorContextSyntaxError(
        f"bad colour {color!r}: expected (r, g, b) with integers 0-255, "
        "'#rrggbb', '#rgb' or 'r,g,b'"
    )


def hex_color(color: Color) -> str:
    """'#rrggbb' of an (r, g, b) colour, for messages."""
    return "#{:02x}{:02x}{:02x}".format(*color)


def _seed(value: Any, where: str) -> int | None:
    """-1 and None mean "follow the global seed"."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ColorContextSyntaxError(f"{where}: seed must be an integer >= 0 or -1, got {value!r}")
    return None if value == -1 else value


def _finite(value: Any, name: str, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ColorContextSyntaxError(f"{where}: {name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ColorContextSyntaxError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return float(value)


def parse_region_string(color: Color, text: str) -> Region:
    """Region from the reference string form; the trailing numeric fields are the options."""
    where = f"colour {color}: {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise ColorContextSyntaxError(f"{where}: expected a non-empty string {STRING_FORM}")
    parts = text.split(",")
    n_numbers = 0
    # At most 3 trailing numbers, and at least one field left for the label.
    while n_numbers < min(3, len(parts) - 1) and _NUMBER.fullmatch(parts[-1 - n_numbers].strip()):
        n_numbers += 1
    label = ",".join(parts[: len(parts) - n_numbers]).strip()
    if not label:
        raise ColorContextSyntaxError(f"{where}: empty label; expected {STRING_FORM}")
    numbers = [float(p) for p in parts[len(parts) - n_numbers :]]
    weight = numbers[0] if numbers else 1.0
    seed = numbers[1] if n_numbers > 1 else None
    if seed is not None and not seed.is_integer():
        raise ColorContextSyntaxError(
            f"{where}: the seed (2nd number) must be an integer; expected {STRING_FORM}"
        )
    blur = numbers[2] if n_numbers > 2 else 0.0
    return Region(
        color,
        label,
        _finite(weight, "weight", where),
        _seed(seed, where),
        _finite(blur, "blur sigma", where, minimum=0.0),
    )


def parse_region_record(record: Mapping[str, Any], index: int = 0) -> Region:
    """Region from a structured record (keys: color, label, weight, seed, blur, occurrence,
    outside)."""
    where = f"region #{index + 1}"
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise ColorContextSyntaxError(
            f"{where}: unknown keys {unknown}; valid: {list(RECORD_KEYS)}"
        )
    if "color" not in record:
        raise ColorContextSyntaxError(f"{where}: missing 'color' (records need color, label)")
    prompt, negative = _text(record, "prompt", where), _text(record, "negative_prompt", where)
    if negative is not None and prompt is None:
        raise ColorContextSyntaxError(f"{where}: a negative_prompt needs the region's own prompt")
    if "label" not in record and prompt is None:
        raise ColorContextSyntaxError(f"{where}: missing 'label' (records need color and a label "
                                      "of the prompt, or their own 'prompt')")
    label = record.get("label", "")
    if not isinstance(label, str) or (not label.strip() and prompt is None):
        raise ColorContextSyntaxError(f"{where}: label must be a non-empty string, got {label!r}")
    occurrence = record.get("occurrence")
    if occurrence is not None and (
        isinstance(occurrence, bool) or not isinstance(occurrence, int) or occurrence < 1
    ):
        raise ColorContextSyntaxError(f"{where}: occurrence must be an integer >= 1 or null")
    return Region(
        color=parse_color(record["color"]),
        label=label.strip(),
        weight=_finite(record.get("weight", 1.0), "weight", where),
        seed=_seed(record.get("seed"), where),
        blur=_finite(record.get("blur") or 0.0, "blur", where, minimum=0.0),
        occurrence=occurrence,
        outside=_finite(record.get("outside") or 0.0, "outside", where),
        prompt=prompt,
        negative_prompt=negative,
    )


def _text(record: Mapping[str, Any], key: str, where: str) -> str | None:
    """An optional non-empty text field of a record (None when absent or null)."""
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ColorContextSyntaxError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def parse_color_context(context: Any) -> list[Region]:
    """List of Region from any accepted form: reference dict, list of records, list of Region,
    a JSON/YAML string or file path (see `load_color_context`), or None/empty (no region)."""
    if context is None:
        return []
    if isinstance(context, (str, Path)):
        return load_color_context(context)
    if isinstance(context, Mapping):
        regions = []
        for key, value in context.items():
            color = parse_color(key)
            if isinstance(value, Mapping):  # {"#ff0000": {"label": ..., "weight": ...}}
                regions.append(parse_region_record({"color": color, **value}, len(regions)))
            else:
                regions.append(parse_region_string(color, value))
        return regions
    if isinstance(context, Sequence):
        regions = []
        for i, item in enumerate(context):
            if isinstance(item, Region):
                regions.append(item)
            elif isinstance(item, Mapping):
                regions.append(parse_region_record(item, i))
            else:
                raise ColorContextSyntaxError(
                    f"region #{i + 1} is {item!r}: expected a record with keys {list(RECORD_KEYS)}"
                )
        return regions
    raise ColorContextSyntaxError(
        f"colour context of type {type(context).__name__}: expected a dict colour -> "
        f"{STRING_FORM}, a list of region records, or a .json/.yaml file"
    )


def load_color_context(path_or_string: str | Path) -> list[Region]:
    """Regions from a .json/.yaml/.yml file or from an inline JSON/YAML string."""
    text = str(path_or_string)
    suffix = Path(text).suffix.lower() if "\n" not in text and len(text) < 4096 else ""
    if isinstance(path_or_string, Path) or suffix in (".json", ".yaml", ".yml"):
        path = Path(text)
        if not path.is_file():
            raise ColorContextSyntaxError(f"colour context file {text!r} does not exist")
        text, origin = path.read_text(encoding="utf-8"), f"file {str(path)!r}"
    else:
        origin = "inline colour context"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_error:
        if suffix == ".json":  # a .json file gets JSON's (more precise) message
            raise ColorContextSyntaxError(f"{origin}: invalid JSON: {json_error}") from None
        data = _load_yaml(text, origin)
    if data is None or isinstance(data, (str, int, float)):
        raise ColorContextSyntaxError(
            f"{origin}: expected a list of regions or a mapping colour -> {STRING_FORM} "
            "(in YAML, quote '#rrggbb' keys: an unquoted # starts a comment)"
        )
    return parse_color_context(data)


def _load_yaml(text: str, origin: str) -> Any:
    import yaml  # only when needed: JSON covers most uses

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ColorContextSyntaxError(f"{origin}: neither valid JSON nor YAML: {error}") from None
