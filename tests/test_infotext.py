"""PNG `parameters` text: read back by A1111's own parsing code, and the A1111 model hash."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pww_ldm import infotext
from pww_ldm.infotext import format_parameters, model_settings, parse_parameters, short_hash

# AUTOMATIC1111 modules/infotext_utils.py, copied verbatim: the oracle is A1111's parser.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def a1111_settings(text: str) -> dict[str, str]:
    """The settings half of A1111's parse_generation_parameters (without its Size split)."""
    lastline = text.strip().split("\n")[-1]
    res = {}
    for k, v in A1111_RE_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = a1111_unquote(v)
        res[k] = v
    return res


REGIONS = json.dumps([{"color": "#ff0000", "label": "cat", "weight": 0.5},
                      {"color": "#00ff00", "label": "dog, big", "weight": 1.0}])
SETTINGS = {
    "Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 42, "Size": "512x768",
    "PwW regions": REGIONS,
    "Note": 'say "hi": now, twice\nand a new line',
    "Path": "C:\\models\\sd-v1-5.ckpt",
    "Empty": "", "Padded": "  x ", "Quoted": '"q"', "Tab": "a\tb",
    "Skipped": None,
    "Model hash": "ba7816bf8f", "Model": "v1-5-pruned-emaonly",
}
PROMPT = "a cat, sitting\non a mat: photo"
NEGATIVE = "blurry, low quality\nwatermark"


def expected_settings() -> dict[str, str]:
    return {k: str(v) for k, v in SETTINGS.items() if v is not None}


def test_a1111_parser_reads_every_setting_back():
    text = format_parameters(PROMPT, NEGATIVE, SETTINGS)
    got = a1111_settings(text)
    assert got == expected_settings()
    assert json.loads(got["PwW regions"])[1]["label"] == "dog, big"
    assert "Skipped" not in text


def test_unquoted_regions_are_cut_by_a1111_parser():
    """Why quoting is needed: the plain `key: value` join loses the regions after one comma."""
    plain = "a cat\nSteps: 20, Seed: 1, PwW regions: " + REGIONS
    assert a1111_settings(plain)["PwW regions"] == '[{"color": "#ff0000"'


def test_text_layout_is_a1111s():
    text = format_parameters("a cat", "dog", {"Steps": 5, "Sampler": "Euler a", "Seed": 3})
    assert text == "a cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler a, Seed: 3"
    assert format_parameters("a cat", "", {"Steps": 5, "Seed": 3, "Size": "8x8"}) == \
        "a cat\nSteps: 5, Seed: 3, Size: 8x8"


def test_parse_parameters_round_trip():
    parsed = parse_parameters(format_parameters(PROMPT, NEGATIVE, SETTINGS))
    assert parsed == {"Prompt": PROMPT, "Negative prompt": NEGATIVE, **expected_settings()}
    no_negative = parse_parameters(format_parameters(PROMPT, "", SETTINGS))
    assert no_negative["Prompt"] == PROMPT and no_negative["Negative prompt"] == ""


def test_parse_parameters_reads_an_a1111_infotext():
    # The example of A1111's parse_generation_parameters docstring (shortened prompts).
    text = ("girl with an artist's beret, determined, blue eyes\n"
            "Negative prompt: ugly, fat, (((deformed))), [blurry]\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
            "Model hash: 45dee52b")
    assert parse_parameters(text) == {
        "Prompt": "girl with an artist's beret, determined, blue eyes",
        "Negative prompt": "ugly, fat, (((deformed))), [blurry]",
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "965400086",
        "Size": "512x512", "Model hash": "45dee52b"}


def test_fewer_than_three_settings_read_as_prompt_like_a1111():
    assert parse_parameters("a cat\nSteps: 20") == {"Prompt": "a cat\nSteps: 20", "Negative prompt": ""}


@pytest.mark.parametrize("key", ["Bad:key", " Lead", "Trail ", "x", "Comma,key", 'Q"'])
def test_keys_a1111_cannot_read_are_refused(key):
    with pytest.raises(ValueError, match="setting name"):
        format_parameters("p", "", {key: 1})


def test_short_hash_is_sha256_prefix(tmp_path):
    abc = tmp_path / "abc.bin"
    abc.write_bytes(b"abc")
    assert short_hash(abc) == "ba7816bf8f"  # FIPS 180-2 test vector: sha256("abc") = ba7816bf8f01...
    data = bytes(range(256)) * (5 * 4096 + 7)  # 5 MiB + 1792 B: several 1 MiB blocks and a rest
    big = tmp_path / "big.safetensors"
    big.write_bytes(data)
    assert short_hash(big) == hashlib.sha256(data).hexdigest()[:10]


def test_short_hash_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"first")
    calls = []
    real = infotext._sha256
    monkeypatch.setattr(infotext, "_sha256", lambda p: calls.append(p) or real(p))
    first = short_hash(path)
    assert short_hash(tmp_path / "." / "model.ckpt") == first and len(calls) == 1
    path.write_bytes(b"second, longer")
    assert short_hash(path) == hashlib.sha256(b"second, longer").hexdigest()[:10]
    assert len(calls) == 2


def test_model_settings(tmp_path):
    path = tmp_path / "my-model.v2.safetensors"
    path.write_bytes(b"abc")
    assert model_settings(SimpleNamespace(checkpoint_path=path)) == {
        "Model hash": "ba7816bf8f", "Model": "my-model.v2"}
    assert model_settings(torch.nn.Linear(1, 1)) == {}
    # A hub-cache style link: the name is the link's, the hash the content's.
    link = tmp_path / "v1-5-pruned.ckpt"
    link.symlink_to(path)
    assert model_settings(SimpleNamespace(checkpoint_path=link)) == {
        "Model hash": "ba7816bf8f", "Model": "v1-5-pruned"}


def test_load_model_records_the_checkpoint_path(tmp_path, monkeypatch):
    from tiny import save_config, tiny_config, tiny_model, write_checkpoint

    from pww_ldm.loading import load_model
    monkeypatch.chdir(tmp_path)
    write_checkpoint(tiny_model(), tmp_path / "tiny.safetensors", ema=False)
    save_config(tiny_config(), tmp_path / "tiny.yaml")
    model = load_model(Path("tiny.safetensors"), device="cpu")
    assert model.checkpoint_path == Path.cwd() / "tiny.safetensors"
    expected = hashlib.sha256((tmp_path / "tiny.safetensors").read_bytes()).hexdigest()[:10]
    assert model_settings(model) == {"Model hash": expected, "Model": "tiny"}
