"""Our CLIP BPE tokenizer against transformers.CLIPTokenizer built from the same merge list."""

import warnings

import pytest
import torch
from oracle import transformers_tokenizer

from pww_ldm.models.tokenizer import (
    BOS_ID,
    EOS_ID,
    VOCAB_SIZE,
    CLIPBPETokenizer,
    build_vocab,
    get_tokenizer,
    load_merges,
)

PROMPTS = [
    "a photo of a cat",
    "Hello, World! It's 2024; we'll see 3.14159...",
    "café naïve Ünïcödé résumé",
    "e\u0301te\u0301 (decomposed accents, NFC makes them one code point)",
    "東京タワーと猫 漢字",
    "emoji 🐱🚀👍🏽 and a family 👨\u200d👩\u200d👧",
    "I'M HERE, THEY'RE GONE, you've, she'd, we'll, it's, can't",
    "  lots   of\twhite\n\nspace\u3000and\u00a0nbsp  ",
    "UPPER Case MiXeD",
    "ΟΔΟΣ Σίσυφος",  # word-final capital sigma: per-character lowercase
    "under_score snake_case--dash &amp; <b>tags</b> ½ ² ٣ ⅷ",
    "a cat, sleeping, on a red sofa",
]


@pytest.fixture(scope="module")
def ours() -> CLIPBPETokenizer:
    return get_tokenizer()


@pytest.fixture(scope="module")
def oracle():
    tokenizer = transformers_tokenizer()
    assert len(tokenizer.get_vocab()) == VOCAB_SIZE
    return tokenizer


def test_vocab_size_and_known_ids(ours: CLIPBPETokenizer) -> None:
    assert len(build_vocab(load_merges())) == VOCAB_SIZE
    ids = ours("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == EOS_ID).all()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_transformers(ours: CLIPBPETokenizer, oracle, prompt: str) -> None:
    expected = oracle(prompt, add_special_tokens=False)["input_ids"]
    assert ours.encode(prompt) == expected
    assert ours.tokens(prompt) == oracle.convert_ids_to_tokens(expected)


def test_batch_padding_matches_transformers(ours: CLIPBPETokenizer, oracle) -> None:
    batch = ours(PROMPTS[:3])
    ref = oracle(PROMPTS[:3], padding="max_length", max_length=77, truncation=True)
    assert batch.tolist() == ref["input_ids"]


def test_long_prompt_truncated_with_warning(ours: CLIPBPETokenizer, oracle) -> None:
    prompt = " ".join(f"word{i}" for i in range(60))  # 120+ tokens
    n = len(ours.encode(prompt))
    with pytest.warns(UserWarning, match=f"{n - 75} tokens were dropped"):
        ids = ours(prompt)
    ref = oracle(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert ids[0].tolist() == ref
    assert ids[0, 0] == BOS_ID and ids[0, 76] == EOS_ID


def test_no_warning_at_exactly_75(ours: CLIPBPETokenizer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = ours(" ".join(["cat"] * 75))
    assert ids[0, 1:76].eq(2368).all() and ids[0, 76] == EOS_ID


def test_decode_round_trip(ours: CLIPBPETokenizer) -> None:
    text = "café 東京 🐱 hello world"
    assert ours.decode(ours.encode(text)) == text
    assert ours.decode(ours("a photo of a cat")[0]) == "a photo of a cat"


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer()
