"""A1111 chunking and label alignment across chunks, with chunk boundaries worked out by hand.

A1111's rules (modules/sd_hijack_clip.py, tokenize_line): 75 content tokens per chunk; when a
chunk is full and the next token is not a comma, and the chunk's last comma is at most 20 tokens
from its end, the tokens after that comma move to the next chunk; BREAK starts a new chunk;
each chunk is BOS + tokens + EOS padding (77 ids), padding at weight 1.
"""

import pytest

from pww_ldm.models.prompt_chunks import prompt_chunks
from pww_ldm.models.tokenizer import BOS_ID, EOS_ID, get_tokenizer
from pww_ldm.region import LabelNotInPromptError
from pww_ldm.region.tokens import label_positions

CAT, DOG, BIRD, COMMA = 2368, 1929, 3329, 267  # one token each (asserted below)


@pytest.fixture(scope="module")
def tok():
    t = get_tokenizer()
    assert [t.encode(w) for w in ("cat", "dog", "bird", ",")] == [[CAT], [DOG], [BIRD], [COMMA]]
    return t


def words(word: str, n: int) -> str:
    return " ".join([word] * n)


def test_202_token_prompt_boundaries(tok) -> None:
    # 70 cat, comma, 50 dog, comma, 80 bird = 202 tokens.
    # Chunk 1 fills with 70 cat, the comma (offset 70) and 4 dogs; the 5th dog finds it full,
    # the comma 75 - 70 = 5 <= 20 from the end: the 4 dogs move on. Chunk 1 = 70 cat + comma.
    # Chunk 2: 50 dog, comma (offset 50), 24 bird = 75; the 25th bird: comma 75 - 50 = 25 > 20
    # from the end, no backtrack. Chunk 3: the other 56 birds.
    prompt = f"{words('cat', 70)}, {words('dog', 50)}, {words('bird', 80)}"
    chunks = prompt_chunks(prompt, tok)
    assert [len(c) for c in chunks] == [71, 75, 56]
    assert chunks[0].padded_tokens() == [BOS_ID] + [CAT] * 70 + [COMMA] + [EOS_ID] * 5
    assert chunks[1].padded_tokens() == [BOS_ID] + [DOG] * 50 + [COMMA] + [BIRD] * 24 + [EOS_ID]
    assert chunks[2].padded_tokens() == [BOS_ID] + [BIRD] * 56 + [EOS_ID] * 20
    assert all(len(c.padded_tokens()) == 77 and c.padded_multipliers() == [1.0] * 77 for c in chunks)


@pytest.mark.parametrize(("cats_before_comma", "first_chunk"), [(55, 56), (54, 75)])
def test_backtrack_window_is_20_tokens(tok, cats_before_comma: int, first_chunk: int) -> None:
    # comma at offset 55: 75 - 55 = 20 <= 20, backtrack (chunk 1 = 55 cat + comma = 56);
    # comma at offset 54: 75 - 54 = 21, no backtrack (chunk 1 = 75 tokens).
    prompt = f"{words('cat', cats_before_comma)}, {words('dog', 40)}"
    chunks = prompt_chunks(prompt, tok)
    assert len(chunks[0]) == first_chunk
    assert len(chunks[0]) + len(chunks[1]) == cats_before_comma + 41


def test_comma_that_does_not_fit_starts_the_next_chunk(tok) -> None:
    # 75 cats fill chunk 1; the comma is the token that finds it full: no backtrack for a comma,
    # it opens chunk 2.
    chunks = prompt_chunks(f"{words('cat', 75)}, dog", tok)
    assert chunks[0].padded_tokens() == [BOS_ID] + [CAT] * 75 + [EOS_ID]
    assert chunks[1].padded_tokens()[:4] == [BOS_ID, COMMA, DOG, EOS_ID]


def test_exactly_75_tokens_is_one_chunk(tok) -> None:
    assert len(prompt_chunks(words("cat", 75), tok)) == 1
    assert len(prompt_chunks(words("cat", 76), tok)) == 2


def test_break_and_weights(tok) -> None:
    chunks = prompt_chunks("a (cat:1.5) BREAK [dog]", tok)
    assert [c.padded_tokens()[:4] for c in chunks] == [[BOS_ID, 320, CAT, EOS_ID],
                                                       [BOS_ID, DOG, EOS_ID, EOS_ID]]
    assert chunks[0].padded_multipliers()[:4] == [1.0, 1.0, 1.5, 1.0]
    assert chunks[1].padded_multipliers()[:3] == [1.0, 1 / 1.1, 1.0]


def test_empty_prompt_and_trailing_break(tok) -> None:
    empty = prompt_chunks("", tok)
    assert len(empty) == 1 and empty[0].padded_tokens() == [BOS_ID] + [EOS_ID] * 76
    assert len(prompt_chunks("cat BREAK", tok)) == 1  # nothing after BREAK: no chunk for it
    assert len(prompt_chunks("BREAK cat", tok)) == 2  # A1111: the empty first chunk stays


def test_label_in_second_chunk(tok) -> None:
    # 80 trees then dog: chunk 1 = 75 trees, chunk 2 = 5 trees + dog at content offset 5,
    # absolute position 77 + 1 + 5 = 83.
    prompt = words("tree", 80) + " dog"
    assert label_positions(prompt, "dog", tok) == (83,)
    assert label_positions(prompt, "tree", tok, occurrence=76) == (78,)
    assert label_positions(prompt, "tree", tok, occurrence=75) == (75,)


def test_label_after_comma_backtrack(tok) -> None:
    # 70 cat, comma, 10 dog, "red bird": chunk 1 = 70 cat + comma (backtrack: 75 - 70 <= 20),
    # chunk 2 = 10 dog + red bird: red at 78 + 10 = 88, bird at 89.
    prompt = f"{words('cat', 70)}, {words('dog', 10)} red bird"
    assert label_positions(prompt, "red bird", tok) == (88, 89)


def test_label_after_break_and_inside_emphasis(tok) -> None:
    prompt = "a cat BREAK a ((red bird:1.3)) on a tree"
    # chunk 2 content: a red bird on a tree -> red at 77 + 1 + 1 = 79
    assert label_positions(prompt, "red bird", tok) == (79, 80)
    assert label_positions(prompt, "a", tok) == (1, 78, 82)
    assert label_positions(prompt, "a", tok, occurrence=3) == (82,)


def test_missing_label_lists_tokens_per_chunk(tok) -> None:
    prompt = words("tree", 76) + " cats"
    with pytest.raises(LabelNotInPromptError) as info:
        label_positions(prompt, "cat", tok)
    message = str(info.value)
    assert "chunk 1 (positions 1-75): 1:tree" in message and "75:tree;" in message
    assert "chunk 2 (positions 78-152): 78:tree 79:cats" in message
    with pytest.raises(LabelNotInPromptError, match="occurrence 3 asked for, but it occurs 2"):
        label_positions("a cat and a cat", "cat", tok, occurrence=3)


def test_break_inside_brackets_is_the_word(tok) -> None:
    # A1111: the marker's weight becomes -1 * 1.1, no longer the marker's -1, so tokenize_line
    # encodes the word "break" at weight -1.1 and starts no chunk.
    chunks = prompt_chunks("(a BREAK b)", tok)
    assert len(chunks) == 1
    assert chunks[0].tokens == [320, *tok.encode("break"), tok.encode("b")[0]]
    assert chunks[0].multipliers == [1.1, -1.1, 1.1]
