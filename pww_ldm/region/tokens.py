"""Aligning a region's label with the prompt: token positions on the chunked (77*k) token axis.

The prompt is chunked exactly as the text encoder chunks it (A1111 syntax removed, 75 tokens per
chunk with BOS/EOS, comma backtrack, BREAK, textual-inversion embeddings as their n vectors), so
a label's positions are the columns its tokens occupy in the (B, 77*k, C) conditioning.
"""

from __future__ import annotations

from typing import Protocol

from ..models.prompt_chunks import CHUNK_POSITIONS, PromptChunk, prompt_chunks, show_chunks
from .errors import LabelNotInPromptError


class Tokenizer(Protocol):
    """What alignment needs from a tokenizer (CLIPBPETokenizer has it).

    A text encoder's tokenizer (`model.cond_stage_model.tokenizer`, a PromptTokenizer) also has
    `chunks(prompt)`, which knows that encoder's textual-inversion embeddings.
    """

    def encode(self, text: str) -> list[int]: ...

    def tokens(self, text: str) -> list[str]: ...


def find_spans(haystack: list, needle: list) -> list[int]:
    """0-based starts of the non-overlapping occurrences of `needle` in `haystack`."""
    starts, i, n = [], 0, len(needle)
    while n and i + n <= len(haystack):
        if haystack[i : i + n] == needle:
            starts.append(i)
            i += n
        else:
            i += 1
    return starts


def _chunks(text: str, tokenizer: Tokenizer) -> list[PromptChunk]:
    chunk = getattr(tokenizer, "chunks", None)
    return chunk(text) if callable(chunk) else prompt_chunks(text, tokenizer)


def label_positions(
    prompt: str, label: str, tokenizer: Tokenizer, occurrence: int | None = None
) -> tuple[int, ...]:
    """Absolute positions on the 77*k token axis of the tokens `label` paints.

    Chunk c's content token j (0-based) is at c * 77 + 1 + j (BOS at c * 77). The label is
    chunked alone and matched as a contiguous run of the prompt's content items (tokens, and
    each vector of an embedding, so an embedding's name paints all its vectors); emphasis
    syntax is removed from both first, so "cat" matches "(cat:1.3)". Every occurrence is
    painted unless `occurrence` (1-based, counted across chunks) picks one.
    """
    chunks = _chunks(prompt, tokenizer)
    keys = [key for chunk in chunks for key in chunk.keys]
    positions = [c * CHUNK_POSITIONS + 1 + j for c, chunk in enumerate(chunks) for j in range(len(chunk))]
    label_chunks = _chunks(label, tokenizer)
    needle = [key for chunk in label_chunks for key in chunk.keys]
    starts = find_spans(keys, needle)
    if not needle or not starts:
        label_tokens = " ".join(n.replace("</w>", "") for c in label_chunks for n in c.names)
        raise LabelNotInPromptError(
            f"label {label!r} (tokens: {label_tokens or 'none'}) is not in the prompt {prompt!r}; "
            f"labels must match whole tokens of the prompt (e.g. 'cat' does not match 'cats'). "
            f"The prompt's tokens are: {show_chunks(chunks)}"
        )
    if occurrence is not None:
        if not 1 <= occurrence <= len(starts):
            raise LabelNotInPromptError(
                f"label {label!r}: occurrence {occurrence} asked for, but it occurs "
                f"{len(starts)} time(s) in the prompt {prompt!r} (tokens: {show_chunks(chunks)})"
            )
        starts = [starts[occurrence - 1]]
    return tuple(positions[s + k] for s in starts for k in range(len(needle)))
