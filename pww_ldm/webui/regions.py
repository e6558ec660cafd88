"""The region table of the page <-> the colour-context records the scripts read (JSON / YAML).

A table row is [colour, label, weight, seed, blur, outside, occurrence]; seed -1 means "the
global seed" and occurrence 0 "every occurrence", because a table cell cannot hold null. Rows with
an empty label are colours the user has not named: they paint nothing. Pixel shares are shown in
the legend above the table, not in it, so repainting never rewrites a row the user is typing in.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from ..region import LabelNotInPromptError, Region, RegionError, label_positions, parse_color_context
from ..region.parse import hex_color
from ..region.tokens import Tokenizer

HEADERS = ["colour", "label", "weight", "seed", "blur", "outside", "occurrence"]
DATATYPES = ["str", "str", "number", "number", "number", "number", "number"]
Row = list[Any]


class RegionTableError(ValueError):
    """A region table (edited in the page or uploaded) that cannot be used; says which row."""


def _number(value: Any, name: str, row: int, integer: bool = False) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RegionTableError(f"region table row {row} ({name}): empty; enter a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RegionTableError(f"region table row {row} ({name}): {value!r} is not a number") from None
    if integer and not number.is_integer():
        raise RegionTableError(f"region table row {row} ({name}): {value!r} must be a whole number")
    return number


def new_row(color: str, label: str = "") -> Row:
    """A row with the defaults: weight 1, global seed, no blur, no outside weight, all occurrences."""
    return [color, label, 1.0, -1, 0.0, 0.0, 0]


def table_for_map(colors: Sequence[str], previous: Sequence[Row] | None) -> list[Row]:
    """Rows for the colours of a map: the previous rows of colours still present, in their order
    and with what the user typed, then the new colours in the given order; colours gone from the
    map are dropped."""
    present = set(colors)
    rows = [list(r) for r in previous or [] if r and str(r[0]).lower() in present]
    listed = {str(r[0]).lower() for r in rows}
    return rows + [new_row(c) for c in colors if c not in listed]


def records_from_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Colour-context records (pww_ldm.region.parse's list form) of the labelled rows."""
    records = []
    for i, row in enumerate(rows, start=1):
        if len(row) != len(HEADERS):
            raise RegionTableError(f"region table row {i} has {len(row)} cells; expected {HEADERS}")
        color, label, weight, seed, blur, outside, occurrence = row
        label = "" if label is None else str(label).strip()
        if not label:
            continue
        seed = int(_number(seed, "seed", i, integer=True))
        occurrence = int(_number(occurrence, "occurrence", i, integer=True))
        record = {"color": str(color), "label": label, "weight": _number(weight, "weight", i),
                  "seed": None if seed == -1 else seed, "blur": _number(blur, "blur", i),
                  "outside": _number(outside, "outside", i),
                  "occurrence": occurrence if occurrence > 0 else None}
        try:
            parse_color_context([record])  # the engine's own checks (colour, ranges)
        except RegionError as exc:
            raise RegionTableError(f"region table row {i}: {exc}") from None
        records.append(record)
    return records


def rows_from_regions(regions: Sequence[Region]) -> list[Row]:
    """Rows of parsed regions."""
    return [[hex_color(r.color), r.label, r.weight, -1 if r.seed is None else r.seed, r.blur,
             r.outside, r.occurrence or 0] for r in regions]


def merge_uploaded(rows: Sequence[Row], uploaded: Sequence[Row]) -> list[Row]:
    """The current rows with the uploaded rows' settings for their colours; uploaded colours
    the map lacks are appended (flagged by `label_report`)."""
    by_color = {str(u[0]).lower(): list(u) for u in uploaded}
    merged = []
    for row in rows:
        color = str(row[0]).lower()
        merged.append([row[0], *by_color.pop(color)[1:]] if color in by_color else list(row))
    return merged + list(by_color.values())


def dumps(records: list[dict[str, Any]], fmt: str = "json") -> str:
    """The records as the JSON or YAML text `--color-context` reads."""
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(records, sort_keys=False, allow_unicode=True)
    return json.dumps(records, indent=1, ensure_ascii=False) + "\n"


def loads(text: str) -> list[Region]:
    """Regions of an uploaded JSON / YAML colour context (any form the scripts accept)."""
    try:
        regions = parse_color_context(text) if text.strip() else []
    except RegionError as exc:
        raise RegionTableError(f"region file: {exc}") from None
    if not regions:
        raise RegionTableError("region file: no region in it; expected a list of records "
                               '[{"color": "#rrggbb", "label": ...}] or {"#rrggbb": "label,weight"}')
    return regions


def label_problems(prompt: str, rows: Sequence[Row], tokenizer: Tokenizer,
                   shares: dict[str, float]) -> dict[str, str]:
    """{colour: why its label cannot paint} for labelled rows: label not in the prompt (or past
    token 75), or colour absent from the map (not in `shares`, hex -> share of pixels)."""
    problems = {}
    for row in rows:
        color, label, occurrence = str(row[0]), str(row[1] or "").strip(), row[6]
        if not label:
            continue
        if not shares.get(color.lower()):
            problems[color] = "this colour is not in the map"
            continue
        try:
            label_positions(prompt, label, tokenizer, int(occurrence) if occurrence else None)
        except LabelNotInPromptError as exc:
            problems[color] = str(exc).split("; ")[0].split(" (the prompt")[0]
        except (TypeError, ValueError):
            problems[color] = f"occurrence {occurrence!r} is not a whole number"
    return problems


def label_report(prompt: str, rows: Sequence[Row], tokenizer: Tokenizer,
                 shares: dict[str, float]) -> str:
    """HTML legend: a swatch, pixel share and label state per row, then the prompt's tokens."""
    problems = label_problems(prompt, rows, tokenizer, shares)
    items = []
    for row in rows:
        color, label = html.escape(str(row[0])), str(row[1] or "").strip()
        share = f"{100.0 * shares.get(str(row[0]).lower(), 0.0):.1f}"
        if not label:
            state = "<i>no label: paints nothing</i>"
        elif str(row[0]) in problems:
            state = f"<b class='pww-bad'>&#9888; {html.escape(problems[str(row[0])])}</b>"
        else:
            state = f"&#10003; {html.escape(label)}"
        items.append(f"<li data-color='{color}'><span class='pww-swatch' style='background:{color}'>"
                     f"</span> <code>{color}</code> {share}% &mdash; {state}</li>")
    tokens = " ".join(f"<code>{i}:{html.escape(t.replace('</w>', ''))}</code>"
                      for i, t in enumerate(tokenizer.tokens(prompt), start=1))
    return (f"<ul class='pww-legend'>{''.join(items)}</ul>"
            f"<div class='pww-tokens'>prompt tokens: {tokens or '<i>empty prompt</i>'}</div>")
