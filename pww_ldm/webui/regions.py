"""The region table of the page <-> the colour-context records the scripts read (JSON / YAML).

A table row is [colour, label, prompt, negative prompt, weight, seed, blur, outside, occurrence]:
prompt / negative prompt are the region's own text (pww_ldm.region.region_prompts; "" = none);
seed -1 means "the global seed" and occurrence 0 "every occurrence", because a table cell cannot
hold null. Rows with neither a label nor a prompt are colours the user has not named: they paint
nothing. Pixel shares are shown in the legend above the table, not in it, so repainting never
rewrites a row the user is typing in.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from ..region import LabelNotInPromptError, Region, RegionError, label_positions, parse_color_context
from ..region.parse import hex_color
from ..region.tokens import Tokenizer

HEADERS = ["colour", "label", "prompt", "negative prompt", "weight", "seed", "blur", "outside",
           "occurrence"]
DATATYPES = ["str", "str", "str", "str", "number", "number", "number", "number", "number"]
MAX_REGION_TOKENS = 75  # a region prompt is one 77-token chunk: BOS, 75 tokens, EOS
TEXTS = {"label": "label", "prompt": "prompt", "negative prompt": "negative_prompt"}
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
    """A row with the defaults: no own prompt, weight 1, global seed, no blur, no outside weight,
    all occurrences."""
    return [color, label, "", "", 1.0, -1, 0.0, 0.0, 0]


def cell_text(value: Any) -> str:
    """A text cell, stripped ("" for an empty cell)."""
    return "" if value is None else str(value).strip()


def cells(row: Row) -> dict[str, Any]:
    """{header: cell} of a row."""
    return dict(zip(HEADERS, row))


def is_named(row: Row) -> bool:
    """Whether the row is meant to paint: it has a label or a text of its own (a negative prompt
    alone is then reported, not ignored)."""
    c = cells(row)
    return any(cell_text(c.get(header)) for header in TEXTS)


def table_for_map(colors: Sequence[str], previous: Sequence[Row] | None) -> list[Row]:
    """Rows for the colours of a map: the previous rows of colours still present, in their order
    and with what the user typed, then the new colours in the given order; colours gone from the
    map are dropped."""
    present = set(colors)
    rows = [list(r) for r in previous or [] if r and str(r[0]).lower() in present]
    listed = {str(r[0]).lower() for r in rows}
    return rows + [new_row(c) for c in colors if c not in listed]


def _record(row: Row, i: int) -> dict[str, Any]:
    """The colour-context record of one named row (row number i, 1-based, for messages)."""
    c = cells(row)
    seed = int(_number(c["seed"], "seed", i, integer=True))
    occurrence = int(_number(c["occurrence"], "occurrence", i, integer=True))
    record: dict[str, Any] = {"color": str(c["colour"])}
    # Empty texts are left out: the engine reads an absent key as "none", an empty one as an error.
    record.update({key: cell_text(c[header]) for header, key in TEXTS.items() if cell_text(c[header])})
    record.update({"weight": _number(c["weight"], "weight", i), "seed": None if seed == -1 else seed,
                   "blur": _number(c["blur"], "blur", i), "outside": _number(c["outside"], "outside", i),
                   "occurrence": occurrence if occurrence > 0 else None})
    return record


def records_from_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Colour-context records (pww_ldm.region.parse's list form) of the named rows."""
    records = []
    for i, row in enumerate(rows, start=1):
        if len(row) != len(HEADERS):
            raise RegionTableError(f"region table row {i} has {len(row)} cells; expected {HEADERS}")
        if not is_named(row):
            continue
        record = _record(row, i)
        try:
            parse_color_context([record])  # the engine's own checks (colour, ranges, texts)
        except RegionError as exc:
            raise RegionTableError(f"region table row {i}: {exc}") from None
        records.append(record)
    return records


def rows_from_regions(regions: Sequence[Region]) -> list[Row]:
    """Rows of parsed regions."""
    return [[hex_color(r.color), r.label, r.prompt or "", r.negative_prompt or "", r.weight,
             -1 if r.seed is None else r.seed, r.blur, r.outside, r.occurrence or 0] for r in regions]


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


def _row_problem(prompt: str, row: Row, tokenizer: Tokenizer, shares: dict[str, float]) -> str | None:
    """Why a named row cannot paint, or None."""
    c = cells(row)
    label, own, occurrence = cell_text(c["label"]), cell_text(c["prompt"]), c["occurrence"]
    if not shares.get(str(c["colour"]).lower()):
        return "this colour is not in the map"
    for name, value in (("prompt", own), ("negative prompt", cell_text(c["negative prompt"]))):
        if len(tokenizer.tokens(value)) > MAX_REGION_TOKENS:
            return f"its own {name} has {len(tokenizer.tokens(value))} tokens; at most 75"
    if cell_text(c["negative prompt"]) and not own:
        return "a negative prompt needs the region's own prompt"
    if not label:
        return None
    try:
        label_positions(prompt, label, tokenizer, int(occurrence) if occurrence else None)
    except LabelNotInPromptError as exc:
        return str(exc).split("; ")[0].split(" (the prompt")[0]
    except (TypeError, ValueError):
        return f"occurrence {occurrence!r} is not a whole number"
    return None


def label_problems(prompt: str, rows: Sequence[Row], tokenizer: Tokenizer,
                   shares: dict[str, float]) -> dict[str, str]:
    """{colour: why it cannot paint} for named rows: label not in the prompt (or past token 75),
    own prompt over 75 tokens, or colour absent from the map (not in `shares`, hex -> share)."""
    problems = {}
    for row in rows:
        if is_named(row):
            problem = _row_problem(prompt, row, tokenizer, shares)
            if problem is not None:
                problems[str(row[0])] = problem
    return problems


def _state(row: Row, problem: str | None) -> str:
    """The legend's words for one row."""
    c = cells(row)
    label, own = cell_text(c["label"]), cell_text(c["prompt"])
    if not is_named(row):
        return "<i>no label or own prompt: paints nothing</i>"
    if problem is not None:
        return f"<b class='pww-bad'>&#9888; {html.escape(problem)}</b>"
    said = [f"&#10003; {html.escape(label)}"] if label else []
    if own:
        said.append(f"own prompt &laquo;{html.escape(own)}&raquo;")
    return " + ".join(said)


def label_report(prompt: str, rows: Sequence[Row], tokenizer: Tokenizer,
                 shares: dict[str, float]) -> str:
    """HTML legend: a swatch, pixel share and label state per row, then the prompt's tokens."""
    problems = label_problems(prompt, rows, tokenizer, shares)
    items = []
    for row in rows:
        color = html.escape(str(row[0]))
        share = f"{100.0 * shares.get(str(row[0]).lower(), 0.0):.1f}"
        state = _state(row, problems.get(str(row[0])))
        items.append(f"<li data-color='{color}'><span class='pww-swatch' style='background:{color}'>"
                     f"</span> <code>{color}</code> {share}% &mdash; {state}</li>")
    tokens = " ".join(f"<code>{i}:{html.escape(t.replace('</w>', ''))}</code>"
                      for i, t in enumerate(tokenizer.tokens(prompt), start=1))
    return (f"<ul class='pww-legend'>{''.join(items)}</ul>"
            f"<div class='pww-tokens'>prompt tokens: {tokens or '<i>empty prompt</i>'}</div>")
