"""OpenAI CLIP's byte-level BPE tokenizer, in pure Python, from the bundled merge list.

Rules (those of OpenAI CLIP and of `transformers.CLIPTokenizer`, which SD v1 uses):
text -> Unicode NFC -> whitespace runs collapsed to one space, stripped -> lowercase ->
pre-tokenized with CLIP's regex -> each piece's UTF-8 bytes mapped through `bytes_to_unicode`
-> BPE with `</w>` marking the end of each word -> ids in the 49408-entry vocabulary.

Normalisation follows the transformers tokenizer (the oracle of our tests) rather than OpenAI's
`ftfy.fix_text` + `html.unescape`: NFC only, so no ftfy dependency, and "&amp;" stays as typed.
"""

from __future__ import annotations

import gzip
import importlib.resources
import threading
import unicodedata
import warnings
from functools import lru_cache

import torch

try:  # `regex` ships with transformers; it knows the Unicode classes \p{L} and \p{N}
    import regex as re

    _WORD_PATTERN = r"\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
except ImportError:  # pragma: no cover - stdlib fallback: exact for letters, close for numbers
    import re

    _WORD_PATTERN = r"[^\W\d_]+|\d|(?:[^\s\w]|_)+"

BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
MAX_LENGTH = 77
_N_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocabulary size minus bytes minus specials
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")

# CLIP's pre-tokenization: specials, English contractions, runs of letters, single digits,
# runs of other non-space characters (punctuation, symbols, emoji).
_PATTERN = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|" + _WORD_PATTERN, re.IGNORECASE
)
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each byte 0..255 to a printable unicode character (GPT-2 / CLIP table).

    Printable latin-1 bytes map to themselves; the others to code points from 256 upward, so BPE
    never sees whitespace or control characters.
    """
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def load_merges() -> list[tuple[str, str]]:
    """The 48894 merges CLIP uses, read from the bundled gz (works from an installed wheel)."""
    res = importlib.resources.files("pww_ldm").joinpath("data/clip/bpe_simple_vocab_16e6.txt.gz")
    text = gzip.decompress(res.read_bytes()).decode("utf-8")
    lines = text.split("\n")[1 : _N_MERGES + 1]  # line 0 is the version header
    return [tuple(line.split()) for line in lines]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """The 49408-entry vocabulary: bytes, bytes + `</w>`, merged symbols, then the 2 specials."""
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m) for m in merges]
    symbols += list(_SPECIALS)
    return {s: i for i, s in enumerate(symbols)}


def normalize(text: str) -> str:
    """NFC, whitespace runs -> one space, strip, lowercase (the transformers CLIP normaliser).

    Lowercasing is per character, as the Rust `tokenizers` normaliser does: no context rules
    (a word-final Greek capital sigma becomes σ, where `str.lower()` would give ς).
    """
    text = _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return "".join(c.lower() for c in text)


class CLIPBPETokenizer:
    """CLIP ViT-L/14 tokenizer: text <-> ids in the 49408-entry vocabulary.

    `__call__` produces Stable Diffusion v1's (B, 77) input: BOS, ids, EOS, padded with EOS.
    """

    def __init__(self, merges: list[tuple[str, str]] | None = None) -> None:
        merges = load_merges() if merges is None else merges
        self.encoder = build_vocab(merges)
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # Per-instance cache (a method-level lru_cache would keep instances alive forever).
        self.bpe = lru_cache(maxsize=65536)(self._bpe)

    def _bpe(self, token: str) -> str:
        """Space-separated BPE symbols of one pre-token (already byte-mapped)."""
        if token in _SPECIALS:
            return token
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return " ".join(word)

    def tokens(self, text: str) -> list[str]:
        """The BPE symbols of `text` (e.g. ['a</w>', 'photo</w>']), for messages and debugging."""
        out: list[str] = []
        for piece in _PATTERN.findall(normalize(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            out.extend(self.bpe(mapped).split(" "))
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return [self.encoder[t] for t in self.tokens(text)]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ids; `</w>` becomes a space; BOS/EOS/padding are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in (BOS_ID, EOS_ID))
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: list[str] | str, max_length: int = MAX_LENGTH) -> torch.Tensor:
        """(B, max_length) long ids: BOS, ids, EOS, then EOS padding (SD v1's convention).

        Prompts longer than max_length - 2 tokens are truncated, with a warning saying how many
        tokens were dropped.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), max_length), EOS_ID, dtype=torch.long)
        room = max_length - 2
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > room:
                warnings.warn(
                    f"prompt is {len(ids)} tokens long; CLIP takes {room}: the last "
                    f"{len(ids) - room} tokens were dropped ({self.decode(ids[room:])!r})",
                    stacklevel=2,
                )
                ids = ids[:room]
            out[row, 0] = BOS_ID
            out[row, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        return out


_instance: CLIPBPETokenizer | None = None
_lock = threading.Lock()


def get_tokenizer() -> CLIPBPETokenizer:
    """The process-wide tokenizer (the vocabulary is read once)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = CLIPBPETokenizer()
        return _instance
