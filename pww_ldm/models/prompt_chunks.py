"""A1111's long-prompt chunking: a prompt in A1111 syntax -> 77-token windows with weights.

Port of `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` (modules/sd_hijack_clip.py):

- the prompt is parsed into (text, weight) runs (`prompt_syntax`); each run is tokenized alone;
- tokens fill chunks of 75; each chunk is later framed as BOS + 75 + EOS (77 positions), the
  unused tail padded with EOS at weight 1;
- when a chunk is full and the token that does not fit is not a comma, and the chunk's last
  comma lies within its final 20 tokens (A1111's `comma_padding_backtrack`), the tokens after
  that comma move to the next chunk;
- `BREAK` ends the current chunk;
- a textual-inversion embedding's name is replaced by its n vectors, kept in one chunk (moved
  whole to the next chunk when they do not fit).

One deliberate difference: when the comma backtrack moves an embedding to the next chunk,
A1111 leaves its vectors' "fix" behind in the old chunk (the moved slots then encode token 0);
here the embedding moves with its slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .prompt_syntax import BREAK_WEIGHT, parse_prompt_attention
from .tokenizer import BOS_ID, EOS_ID, CLIPBPETokenizer

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from .embeddings import Embedding

CHUNK_LENGTH = 75  # content tokens per chunk; with BOS and EOS, CLIP's 77 positions
CHUNK_POSITIONS = CHUNK_LENGTH + 2
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
PLACEHOLDER_ID = 0  # the id A1111 puts where an embedding's vectors go (they replace its output)


class TextTokenizer(Protocol):
    """What chunking needs from a tokenizer (CLIPBPETokenizer has it)."""

    def encode(self, text: str) -> list[int]: ...

    def tokens(self, text: str) -> list[str]: ...


class EmbeddingLookup(Protocol):
    """What chunking needs from an embedding database (EmbeddingDatabase has it)."""

    def find_at(self, ids: Sequence[int], position: int) -> tuple[Embedding, int] | None: ...


@dataclass
class PromptChunk:
    """Up to 75 content items of one chunk; `padded_*` give the encoder's 77 positions.

    Per content item (a token, or one vector of an embedding): `tokens` its id (PLACEHOLDER_ID for
    embedding vectors), `multipliers` its emphasis weight, `keys` what a region label matches
    (("token", id) or ("embedding", name, k)), `names` a readable form. `fixes`: (offset, embedding)
    with the embedding's vectors at content offsets offset .. offset + n - 1.
    """

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    keys: list[tuple] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)
    last_comma: int = -1

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int, weight: float, key: tuple, name: str) -> None:
        """Add one content item."""
        self.tokens.append(token)
        self.multipliers.append(weight)
        self.keys.append(key)
        self.names.append(name)

    def append_embedding(self, embedding: Embedding, weight: float) -> None:
        """Add an embedding's n vectors, all with `weight`."""
        self.fixes.append((len(self), embedding))
        for k in range(embedding.n_vectors):
            self.append(PLACEHOLDER_ID, weight, ("embedding", embedding.name, k),
                        f"{embedding.name}[{k}]" if embedding.n_vectors > 1 else embedding.name)

    def split(self, at: int) -> PromptChunk:
        """Cut this chunk at content offset `at`; returns the tail as a new chunk."""
        tail = PromptChunk(self.tokens[at:], self.multipliers[at:], self.keys[at:], self.names[at:],
                           [(off - at, emb) for off, emb in self.fixes if off >= at])
        self.fixes = [(off, emb) for off, emb in self.fixes if off < at]
        del self.tokens[at:], self.multipliers[at:], self.keys[at:], self.names[at:]
        return tail

    def padded_tokens(self) -> list[int]:
        """The 77 ids the encoder sees: BOS, content, EOS padding."""
        return [BOS_ID, *self.tokens] + [EOS_ID] * (CHUNK_POSITIONS - 1 - len(self))

    def padded_multipliers(self) -> list[float]:
        """The 77 emphasis weights (1 at BOS, EOS and padding)."""
        return [1.0, *self.multipliers] + [1.0] * (CHUNK_POSITIONS - 1 - len(self))


def prompt_chunks(prompt: str, tokenizer: TextTokenizer, embeddings: EmbeddingLookup | None = None,
                  backtrack: int = COMMA_BACKTRACK) -> list[PromptChunk]:
    """Split a prompt in A1111 syntax into chunks as A1111 does (see the module docstring).

    Always at least one chunk (the empty prompt gives one empty chunk).
    """
    comma = tokenizer.encode(",")[0]
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    for text, weight in parse_prompt_attention(prompt):
        # Inside brackets the marker's weight is multiplied too, and A1111 then reads it as the
        # word "BREAK" at that (negative) weight; so does this test.
        if text == "BREAK" and weight == BREAK_WEIGHT:
            chunks.append(chunk)
            chunk = PromptChunk()
            continue
        ids, names = tokenizer.encode(text), tokenizer.tokens(text)
        position = 0
        while position < len(ids):
            if ids[position] == comma:
                chunk.last_comma = len(chunk)
            elif (backtrack and len(chunk) == CHUNK_LENGTH and chunk.last_comma != -1
                  and len(chunk) - chunk.last_comma <= backtrack):
                tail = chunk.split(chunk.last_comma + 1)
                chunks.append(chunk)
                chunk = tail
            if len(chunk) == CHUNK_LENGTH:
                chunks.append(chunk)
                chunk = PromptChunk()
            found = embeddings.find_at(ids, position) if embeddings is not None else None
            if found is None:
                chunk.append(ids[position], weight, ("token", ids[position]), names[position])
                position += 1
                continue
            embedding, name_length = found
            if len(chunk) + embedding.n_vectors > CHUNK_LENGTH:
                chunks.append(chunk)
                chunk = PromptChunk()
            chunk.append_embedding(embedding, weight)
            position += name_length
    if len(chunk) or not chunks:
        chunks.append(chunk)
    return chunks


class PromptTokenizer:
    """A text encoder's tokenizer: the BPE tokenizer plus that encoder's embeddings.

    Behaves as the BPE tokenizer (encode, tokens, decode, and `__call__` for plain (B, 77) ids)
    and adds `chunks`, the one chunking both the encoder and region-label alignment use.
    """

    def __init__(self, bpe: CLIPBPETokenizer, embedding_db: EmbeddingLookup | None = None) -> None:
        self.bpe = bpe
        self.embedding_db = embedding_db

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS (no syntax parsing)."""
        return self.bpe.encode(text)

    def tokens(self, text: str) -> list[str]:
        """BPE symbols of `text` (no syntax parsing)."""
        return self.bpe.tokens(text)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ids."""
        return self.bpe.decode(ids)

    def __call__(self, texts: list[str] | str, max_length: int = CHUNK_POSITIONS) -> torch.Tensor:
        """(B, max_length) plain ids, truncated (see CLIPBPETokenizer.__call__)."""
        return self.bpe(texts, max_length=max_length)

    def chunks(self, prompt: str) -> list[PromptChunk]:
        """The prompt's A1111 chunks, with this encoder's embeddings."""
        return prompt_chunks(prompt, self.bpe, self.embedding_db)


def show_chunks(chunks: list[PromptChunk]) -> str:
    """The chunks' content as `position:token`, positions absolute on the 77*k token axis."""
    lines = []
    for i, chunk in enumerate(chunks):
        start = i * CHUNK_POSITIONS + 1
        items = " ".join(f"{start + j}:{name.replace('</w>', '')}" for j, name in enumerate(chunk.names))
        lines.append(f"chunk {i + 1} (positions {start}-{start + CHUNK_LENGTH - 1}): {items or '(empty)'}")
    return "; ".join(lines)
