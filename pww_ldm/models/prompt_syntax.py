"""A1111's prompt emphasis syntax, parsed into (text, weight) runs. Pure: no tokenizer, no torch.

The rules are those of AUTOMATIC1111's `modules/prompt_parser.parse_prompt_attention`:

- `(text)` multiplies the weight of `text` by 1.1, `((text))` by 1.21, `[text]` divides it by 1.1;
- `(text:1.5)` multiplies it by 1.5 (spaces allowed around the number: `(text : 1.5)`);
- `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are the literal characters;
- `BREAK` (a whole word, in capitals) ends the current 75-token chunk: it comes back as the
  run `("BREAK", -1.0)`, which the chunker (`prompt_chunks`) reads as "start a new chunk";
- an unclosed `(` or `[` applies to the rest of the prompt; a stray `)` or `]` is plain text;
- anything else, `<lora:name:0.8>` tags and `:` included, is plain text.

Adjacent runs of equal weight are merged, and an empty prompt gives `[("", 1.0)]`.
"""

from __future__ import annotations

import re

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0  # the weight of the ("BREAK", -1.0) marker run, never a real weight

# One alternative per lexical unit, tried in order, as A1111 writes it: escapes, brackets, a
# closing `:weight)`, a closing bracket, a run of plain text, a lone colon.
_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|
    \(|\[|
    :\s*([+-]?[.\d]+)\s*\)|
    \)|]|
    [^\\()\[\]:]+|
    :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _weight(value: str) -> float | None:
    # A1111 calls float() on `[.\d]+`, which raises on "1.2.3"; such text stays plain here.
    try:
        return float(value)
    except ValueError:
        return None


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) runs, A1111's list (its docstring's examples hold).

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for run in runs[start:]:
            run[1] *= multiplier

    for match in _ATTENTION.finditer(text):
        piece, number = match.group(0), match.group(1)
        weight = _weight(number) if number is not None else None
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(runs))
        elif piece == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), weight)
        elif piece == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    runs.append(["BREAK", BREAK_WEIGHT])
                runs.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    return _merge_equal_weights(runs or [["", 1.0]])


def _merge_equal_weights(runs: list[list]) -> list[tuple[str, float]]:
    merged: list[list] = [runs[0]]
    for text, weight in runs[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]

