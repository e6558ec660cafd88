"""parse_prompt_attention against A1111's documented examples and its rules worked by hand.

The expected lists are copied from the docstring of AUTOMATIC1111/stable-diffusion-webui
modules/prompt_parser.py `parse_prompt_attention` (its doctests), or derived by hand from
that function's rules (marked so); none is produced by the code under test.
"""

import pytest

from pww_ldm.models.prompt_syntax import parse_prompt_attention

# (input, A1111's docstring output), verbatim.
A1111_DOCSTRING = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1],
      ["hill", 0.55], [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]

# Worked by hand from the rules (re_attention tokens, the bracket stacks, re_break, the merge).
BY_HAND = [
    # BREAK splits plain text into parts with the ("BREAK", -1) marker between them.
    ("a cat BREAK a dog", [["a cat", 1.0], ["BREAK", -1.0], ["a dog", 1.0]]),
    # BREAK inside brackets: the marker is multiplied too, as A1111 does (1.1 * -1).
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),
    ("BREAKFAST", [["BREAKFAST", 1.0]]),  # only the whole word
    # nesting: two round -> 1.1 * 1.1, square -> / 1.1
    ("((a)) [b]", [["a", 1.1 * 1.1], [" ", 1.0], ["b", 1 / 1.1]]),
    ("[[a]]", [["a", (1 / 1.1) * (1 / 1.1)]]),
    ("((a:1.5) b)", [["a", 1.5 * 1.1], [" b", 1.1]]),
    # the newer A1111 regex allows spaces around the weight
    ("(a : 1.5)", [["a ", 1.5]]),
    ("[unbalanced", [["unbalanced", 1 / 1.1]]),
    # stray closers are plain text
    ("a ]b) c", [["a ]b) c", 1.0]]),
    # an escaped backslash is one backslash; a lone backslash (before "s") is dropped
    ("\\\\ back\\slash", [["\\ backslash", 1.0]]),
    # a weight outside round brackets is plain text
    ("a:1.2) b", [["a:1.2) b", 1.0]]),
    ("", [["", 1.0]]),
    # LoRA tags are plain text here (the LoRA code strips them first)
    ("<lora:style:0.8> a (cat:1.2)", [["<lora:style:0.8> a ", 1.0], ["cat", 1.2]]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_DOCSTRING)
def test_a1111_docstring_examples(text: str, expected: list) -> None:
    assert [[t, w] for t, w in parse_prompt_attention(text)] == expected


@pytest.mark.parametrize(("text", "expected"), BY_HAND)
def test_rules_by_hand(text: str, expected: list) -> None:
    assert [[t, w] for t, w in parse_prompt_attention(text)] == expected


def test_malformed_weight_is_text_not_a_crash() -> None:
    # A1111 raises ValueError from float("1.2.3"); we keep the piece as text and carry on:
    # "(" opens, "b" and ":1.2.3)" and " c" are text, the unclosed "(" applies 1.1 to the rest.
    assert [[t, w] for t, w in parse_prompt_attention("a (b:1.2.3) c")] == [
        ["a ", 1.0], ["b:1.2.3) c", 1.1]]


# Degenerate input, worked by hand: opening brackets that enclose nothing multiply nothing; closers
# with nothing open are text; a lone backslash is dropped; ":" is text.
DEGENERATE = [
    ("(((", [["", 1.0]]),
    ("]]]", [["]]]", 1.0]]),
    (")(", [[")", 1.0]]),
    ("[(])", [["", 1.0]]),
    ("\\", [["", 1.0]]),
    ("(:", [[":", 1.1]]),
    (":)", [[":)", 1.0]]),
    ("(a:)", [["a:", 1.1]]),
    ("[a:b:0.5]", [["a:b:0.5", 1 / 1.1]]),  # A1111's prompt editing is not supported: text
]


@pytest.mark.parametrize(("text", "expected"), DEGENERATE)
def test_degenerate_input_never_crashes(text: str, expected: list) -> None:
    assert [[t, w] for t, w in parse_prompt_attention(text)] == expected
