"""Prompt encoding (chunks, emphasis, cond/uncond padding) against transformers' CLIPTextModel.

The oracle is transformers' CLIPTextModel holding the same random weights, fed 77-id windows
written out by hand from A1111's rules; A1111's emphasis (sd_emphasis.EmphasisOriginal) is
`z * multipliers` then `z * (original_mean / new_mean)`, computed here on the oracle's output.
"""

import pytest
import torch
from oracle import clip_encoder_and_oracle
from tiny import TINY_CLIP

from pww_ldm.models.text_encoder import pad_to_same_length
from pww_ldm.models.tokenizer import BOS_ID, EOS_ID

CAT, DOG, BIRD, COMMA, A, RED = 2368, 1929, 3329, 267, 320, 736
TOL = 1e-5


@pytest.fixture(scope="module")
def pair():
    return clip_encoder_and_oracle(TINY_CLIP, seed=3)


def window(content: list[int]) -> list[int]:
    return [BOS_ID, *content] + [EOS_ID] * (76 - len(content))


def run(oracle, content: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return oracle(input_ids=torch.tensor([window(content)])).last_hidden_state


def a1111_emphasis(z: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
    m = torch.tensor(multipliers).reshape(1, -1, 1)
    original_mean = z.mean()
    z = z * m.expand(z.shape)
    return z * (original_mean / z.mean())


def words(word: str, n: int) -> str:
    return " ".join([word] * n)


def test_plain_prompts_are_bit_identical_to_plain_encoding(pair) -> None:
    encoder, oracle = pair
    prompts = ["a photo of a cat", "a dog, a tree & the sky!", ""]
    with torch.no_grad():
        ours = encoder.encode(prompts)
        plain = encoder.encode_tokens(encoder.tokenize(prompts))
        theirs = oracle(input_ids=encoder.tokenize(prompts)).last_hidden_state
    assert ours.shape == (3, 77, 32) and torch.equal(ours, plain)
    assert (ours - theirs).abs().max() < TOL


def test_emphasis_multiplies_and_restores_the_mean(pair) -> None:
    encoder, oracle = pair
    with torch.no_grad():
        ours = encoder.encode("a (red:1.5) [cat]")
    z = run(oracle, [A, RED, CAT])
    multipliers = [1.0, 1.0, 1.5, 1 / 1.1] + [1.0] * 73
    expected = a1111_emphasis(z, multipliers)
    assert (ours - expected).abs().max() < TOL
    assert (ours - z).abs().max() > 1e-3  # emphasis did something
    assert abs(ours.mean().item() - z.mean().item()) < 1e-6


def test_three_chunks_are_the_concatenation_of_separate_encodings(pair) -> None:
    encoder, oracle = pair
    # Chunks worked out by hand in test_prompt_chunks: 70 cat + comma | 50 dog, comma, 24 bird
    # | 56 bird; the dogs weighted 1.2 (the mean restored per chunk, as A1111 encodes per chunk).
    prompt = f"{words('cat', 70)}, ({words('dog', 50)}:1.2), {words('bird', 80)}"
    with torch.no_grad():
        ours = encoder.encode(prompt)
    first = run(oracle, [CAT] * 70 + [COMMA])
    second = a1111_emphasis(run(oracle, [DOG] * 50 + [COMMA] + [BIRD] * 24),
                            [1.0] + [1.2] * 50 + [1.0] * 26)
    third = run(oracle, [BIRD] * 56)
    assert ours.shape == (1, 3 * 77, 32)
    assert (ours - torch.cat([first, second, third], dim=1)).abs().max() < TOL


def test_batch_rows_with_fewer_chunks_get_empty_chunks(pair) -> None:
    encoder, oracle = pair
    with torch.no_grad():
        ours = encoder.encode(["cat", words("dog", 80)])
    empty = run(oracle, [])
    assert ours.shape == (2, 154, 32)
    assert (ours[0:1, :77] - run(oracle, [CAT])).abs().max() < TOL
    assert (ours[0:1, 77:] - empty).abs().max() < TOL
    assert (ours[1:2, 77:] - run(oracle, [DOG] * 5)).abs().max() < TOL


def test_pad_to_same_length_appends_empty_prompt_chunks(pair) -> None:
    encoder, oracle = pair
    with torch.no_grad():
        cond = encoder.encode([words("cat", 160)] * 2)  # 3 chunks
        uncond = encoder.encode(["", ""])
    empty = run(oracle, []).expand(2, 77, 32)
    padded_cond, padded_uncond = pad_to_same_length(encoder, cond, uncond)
    assert padded_cond is cond and padded_uncond.shape == (2, 231, 32)
    expected = torch.cat([uncond, empty, empty], dim=1)
    assert (padded_uncond - expected).abs().max() < TOL
    short_cond, long_uncond = pad_to_same_length(encoder, uncond, cond)  # the other way round
    assert long_uncond is cond and (short_cond - expected).abs().max() < TOL
    same = pad_to_same_length(encoder, cond, cond)
    assert same[0] is cond and same[1] is cond
    with pytest.raises(ValueError, match="77\\*k tokens"):
        pad_to_same_length(encoder, cond, uncond[:, :70])


def test_padding_uses_the_same_clip_skip(pair) -> None:
    encoder, oracle = pair
    with torch.no_grad():
        cond = encoder.encode(words("cat", 80), clip_skip=2)
        _, padded = pad_to_same_length(encoder, cond, encoder.encode("", clip_skip=2), clip_skip=2)
        hidden = oracle(input_ids=torch.tensor([window([])]), output_hidden_states=True).hidden_states
    final_norm = getattr(oracle, "text_model", oracle).final_layer_norm
    with torch.no_grad():
        expected = final_norm(hidden[-2])
    assert (padded[:, 77:] - expected).abs().max() < TOL
