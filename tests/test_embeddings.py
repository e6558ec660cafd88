"""Textual inversion: A1111 .pt against diffusers' load_textual_inversion on identical weights,
the other file formats, bad files, and embedding names as region labels."""

import os
import pickle

import pytest
import torch
from oracle import transformers_clip, transformers_tokenizer
from safetensors.torch import save_file
from tiny import TINY_CLIP, randomize_

from pww_ldm.models.embeddings import EmbeddingError, EmbeddingShapeError, load_embeddings
from pww_ldm.models.text_encoder import FrozenCLIPEmbedder
from pww_ldm.region.tokens import label_positions

TOL = 1e-5
WIDTH = TINY_CLIP["hidden_size"]


def a1111_pt(path, vectors: torch.Tensor, name: str) -> None:
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name,
                "step": 500, "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5"}, path)


@pytest.fixture()
def encoder():
    return randomize_(FrozenCLIPEmbedder(config=TINY_CLIP), seed=4)


@pytest.fixture(scope="module")
def vectors():
    return torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(7))


def diffusers_encoding(encoder, path, prompt: str) -> torch.Tensor:
    from diffusers.loaders import TextualInversionLoaderMixin

    class Holder(TextualInversionLoaderMixin):
        hf_device_map = None

        def __init__(self, tokenizer, text_encoder):
            self.tokenizer, self.text_encoder = tokenizer, text_encoder
            self.components = {"tokenizer": tokenizer, "text_encoder": text_encoder}

    tokenizer = transformers_tokenizer()
    text_encoder = transformers_clip(
        {"cond_stage_model." + k: v for k, v in encoder.state_dict().items()}, TINY_CLIP)
    holder = Holder(tokenizer, text_encoder)
    holder.load_textual_inversion(str(path))
    ids = tokenizer(holder.maybe_convert_prompt(prompt, tokenizer), padding="max_length",
                    max_length=77, truncation=True).input_ids
    with torch.no_grad():
        return text_encoder(input_ids=torch.tensor([ids])).last_hidden_state


@pytest.mark.parametrize("n_vectors", [1, 3])
def test_a1111_pt_matches_diffusers(encoder, vectors, tmp_path, n_vectors: int) -> None:
    path = tmp_path / "mystyle.pt"
    a1111_pt(path, vectors[:n_vectors], "mystyle")
    prompt = "a photo of mystyle, at night"
    expected = diffusers_encoding(encoder, path, prompt)
    assert load_embeddings(encoder, path) == ["mystyle"]
    with torch.no_grad():
        ours = encoder.encode(prompt)
        plain = encoder.encode_tokens(encoder.tokenize(prompt))
    assert (ours - expected).abs().max() < TOL
    assert (ours - plain).abs().max() > 1e-3  # the name's own tokens would give another result


def write_formats(folder, vectors: torch.Tensor) -> dict:
    """The same vectors in each format, each file named `style` in its own folder."""
    paths = {}
    for kind in ("pt", "parameterdict", "safetensors", "bin"):
        (folder / kind).mkdir()
        paths[kind] = folder / kind / ("style.safetensors" if kind == "safetensors" else
                                       "style.bin" if kind == "bin" else "style.pt")
    a1111_pt(paths["pt"], vectors, "style")
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": params}, paths["parameterdict"])
    save_file({"emb_params": vectors.contiguous()}, str(paths["safetensors"]))
    torch.save({"<style>": vectors}, paths["bin"])
    return paths


def test_every_format_gives_the_same_vectors(vectors, tmp_path) -> None:
    results = {}
    for kind, path in write_formats(tmp_path, vectors).items():
        enc = randomize_(FrozenCLIPEmbedder(config=TINY_CLIP), seed=4)
        assert load_embeddings(enc, path.parent) == ["style"]
        assert torch.equal(enc.embedding_db["style"].vectors, vectors)
        with torch.no_grad():
            results[kind] = enc.encode("a (style:1.2) cat")
    assert all(torch.equal(results["pt"], r) for r in results.values())


def test_diffusers_single_vector_bin(encoder, tmp_path) -> None:
    vector = torch.randn(WIDTH)
    torch.save({"<cat-toy>": vector}, tmp_path / "toy.bin")
    load_embeddings(encoder, tmp_path)
    assert encoder.embedding_db["toy"].vectors.shape == (1, WIDTH)
    assert torch.equal(encoder.embedding_db["toy"].vectors[0], vector)


def test_unknown_name_is_plain_text(encoder, vectors, tmp_path) -> None:
    a1111_pt(tmp_path / "mystyle.pt", vectors, "mystyle")
    load_embeddings(encoder, tmp_path)
    with torch.no_grad():
        assert torch.equal(encoder.encode("a otherstyle cat"),
                           encoder.encode_tokens(encoder.tokenize("a otherstyle cat")))


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_bad_files_are_errors_naming_the_file(encoder, tmp_path) -> None:
    torch.save({"string_to_param": {"*": _RunsCode()}}, tmp_path / "evil.pt")
    with pytest.raises(EmbeddingError, match="evil.pt: refused to unpickle"):
        load_embeddings(encoder, tmp_path / "evil.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(EmbeddingError, match="broken.safetensors"):
        load_embeddings(encoder, tmp_path / "broken.safetensors")
    torch.save({"a": torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "two.bin")
    with pytest.raises(EmbeddingError, match="two.bin: not a textual-inversion embedding.*a, b"):
        load_embeddings(encoder, tmp_path / "two.bin")
    with pytest.raises(EmbeddingError, match="no such embeddings folder"):
        load_embeddings(encoder, tmp_path / "missing")
    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump([1, 2], f, protocol=2)
    with pytest.raises(EmbeddingError, match="pickled.pt"):
        load_embeddings(encoder, tmp_path / "pickled.pt")


def test_other_models_embeddings(encoder, tmp_path) -> None:
    a1111_pt(tmp_path / "wide.pt", torch.zeros(2, 768), "wide")
    sdxl = {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}
    save_file(sdxl, str(tmp_path / "xl.safetensors"))
    a1111_pt(tmp_path / "ok.pt", torch.zeros(1, WIDTH), "ok")
    with pytest.raises(EmbeddingShapeError, match="wide.pt: vectors of width 768; .* takes 32"):
        load_embeddings(encoder, tmp_path / "wide.pt")
    with pytest.warns(UserWarning, match="skipped: .*(wide.pt|xl.safetensors)") as record:
        assert load_embeddings(encoder, tmp_path) == ["ok"]
    assert len(record) == 2


def test_embedding_name_as_region_label(encoder, vectors, tmp_path) -> None:
    a1111_pt(tmp_path / "mystyle.pt", vectors, "mystyle")
    load_embeddings(encoder, tmp_path)
    tokenizer = encoder.tokenizer
    # "a photo of" = 3 tokens, then the 3 vectors at 4, 5, 6 (the name's 2 tokens are replaced)
    assert label_positions("a photo of (mystyle:1.2) cat", "mystyle", tokenizer) == (4, 5, 6)
    assert label_positions("a photo of mystyle cat", "cat", tokenizer) == (7,)
    chunks = tokenizer.chunks("a photo of (mystyle:1.2) cat")
    assert chunks[0].padded_multipliers()[4:8] == [1.2, 1.2, 1.2, 1.0]
    # 73 cats leave 2 free slots: the 3 vectors move whole to chunk 2 (77 + 1 ..)
    prompt = " ".join(["cat"] * 73) + " mystyle"
    assert label_positions(prompt, "mystyle", tokenizer) == (78, 79, 80)
    assert [len(c) for c in tokenizer.chunks(prompt)] == [73, 3]


def test_comma_backtrack_moves_embedding_with_its_slots(encoder, vectors, tmp_path) -> None:
    a1111_pt(tmp_path / "mystyle.pt", vectors, "mystyle")
    load_embeddings(encoder, tmp_path)
    # 70 cats, comma (offset 70), mystyle (offsets 71-73), cat (74): chunk full; the next cat
    # backtracks to the comma, so the embedding and a cat move to chunk 2 at offset 0.
    prompt = " ".join(["cat"] * 70) + ", mystyle cat cat"
    first, second = encoder.tokenizer.chunks(prompt)
    assert len(first) == 71 and first.fixes == []
    assert [(offset, e.name) for offset, e in second.fixes] == [(0, "mystyle")]
    assert label_positions(prompt, "mystyle", encoder.tokenizer) == (78, 79, 80)
    with torch.no_grad():
        ours = encoder.encode(prompt)
        reference = encoder.encode("mystyle cat cat")
    assert (ours[:, 77:] - reference).abs().max() < TOL
