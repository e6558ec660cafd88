"""Aligning a region's label with the prompt: contiguous token spans, 1-based after BOS."""

from __future__ import annotations

from typing import Protocol

from .errors import LabelNotInPromptError

MAX_CONTENT_TOKENS = 75  # 77 minus BOS and EOS: the text encoder never sees tokens past this


class Tokenizer(Protocol):
    """What alignment needs from a tokenizer (CLIPBPETokenizer has it)."""

    def encode(self, text: str) -> list[int]: ...

    def tokens(self, text: str) -> list[str]: ...


def find_spans(haystack: list[int], needle: list[int]) -> list[int]:
    """0-based starts of the non-overlapping occurrences of `needle` in `haystack`."""
    starts, i, n = [], 0, len(needle)
    while n and i + n <= len(haystack):
        if haystack[i : i + n] == needle:
            starts.append(i)
            i += n
        else:
            i += 1
    return starts


def _show_tokens(tokens: list[str]) -> str:
    # Position: token, as the user must count them (1-based after BOS), `</w>` dropped for reading.
    return " ".join(f"{i}:{t.replace('</w>', '')}" for i, t in enumerate(tokens, start=1))


def label_positions(
    prompt: str, label: str, tokenizer: Tokenizer, occurrence: int | None = None
) -> tuple[int, ...]:
    """1-based positions (in the 77-token sequence, BOS at 0) of the tokens `label` paints.

    The label is encoded alone and matched as a contiguous span of the prompt's token ids; every
    occurrence is painted unless `occurrence` (1-based) picks one. A span past the 75th content
    token (cut off by CLIP's 77-token window) is an error, as is a label that is not in the prompt.
    """
    needle = tokenizer.encode(label)
    prompt_ids = tokenizer.encode(prompt)
    starts = find_spans(prompt_ids, needle)
    shown = _show_tokens(tokenizer.tokens(prompt))
    if not needle or not starts:
        label_tokens = " ".join(t.replace("</w>", "") for t in tokenizer.tokens(label))
        raise LabelNotInPromptError(
            f"label {label!r} (tokens: {label_tokens}) is not in the prompt {prompt!r}; labels "
            f"must match whole tokens of the prompt (e.g. 'cat' does not match 'cats'). "
            f"The prompt's tokens are: {shown}"
        )
    if occurrence is not None:
        if occurrence > len(starts):
            raise LabelNotInPromptError(
                f"label {label!r}: occurrence {occurrence} asked for, but it occurs "
                f"{len(starts)} time(s) in the prompt {prompt!r} (tokens: {shown})"
            )
        starts = [starts[occurrence - 1]]
    cut = [s for s in starts if s + len(needle) > MAX_CONTENT_TOKENS]
    if cut:
        raise LabelNotInPromptError(
            f"label {label!r} at token {cut[0] + 1} lies past the {MAX_CONTENT_TOKENS}-token limit "
            f"of CLIP's context (the prompt has {len(prompt_ids)} tokens): shorten the prompt, or "
            f"pick an occurrence inside the limit with `occurrence`"
        )
    return tuple(s + 1 + k for s in starts for k in range(len(needle)))
