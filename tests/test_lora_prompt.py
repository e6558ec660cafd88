"""`<lora:name:weight>` tags, the LoRA folder, `--lora file:weight`, the manager, `Lora hashes`."""

import hashlib
from pathlib import Path

import pytest
import torch
from lora_files import lora_pair, write
from tiny import tiny_model

from pww_ldm.lora import (
    LoraFormatError,
    LoraManager,
    LoraNotFoundError,
    active_loras,
    extract_lora_tags,
    lora_hashes_text,
    lora_shorthash,
    parse_lora_arg,
    resolve_lora,
)


@pytest.mark.parametrize("prompt, text, tags", [
    # A1111 removes the tag and keeps the text around it as it was.
    ("a cat <lora:style:0.8>, <lora:detail>", "a cat , ", [("style", 0.8), ("detail", 1.0)]),
    ("<lyco:soft:-0.5>photo", "photo", [("soft", -0.5)]),
    ("no tags (here:1.2)", "no tags (here:1.2)", []),
    ("<hypernet:h:1> stays", "<hypernet:h:1> stays", []),
    ("<lora:a b:1.5>x", "x", [("a b", 1.5)]),
])
def test_extract_lora_tags(prompt, text, tags):
    assert extract_lora_tags(prompt) == (text, tags)


@pytest.mark.parametrize("prompt, match", [
    ("<lora:style:strong>", "weight 'strong' is not a number"),
    ("<lora:style:0.5:1>", "only <lora:name> and <lora:name:weight>"),
    ("<lora:style:te=0.5>", "only <lora:name> and <lora:name:weight>"),
    ("<lora: :1>", "no LoRA name"),
])
def test_bad_tags_say_what_to_write(prompt, match):
    with pytest.raises(LoraFormatError, match=match):
        extract_lora_tags(prompt)


@pytest.mark.parametrize("arg, path, weight", [
    ("models/Lora/a.safetensors:0.6", "models/Lora/a.safetensors", 0.6),
    ("a.safetensors", "a.safetensors", 1.0),
    ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
    ("C:\\loras\\a.safetensors:-1", "C:\\loras\\a.safetensors", -1.0),
])
def test_parse_lora_arg(arg, path, weight):
    assert parse_lora_arg(arg) == (Path(path), weight)


def _lora_file(model, path, seed, output_name=None):
    conv = model.model.diffusion_model.out[2]
    down, up = lora_pair(conv, 2, torch.Generator().manual_seed(seed))
    metadata = {"ss_output_name": output_name or path.stem} if path.suffix == ".safetensors" else None
    return write({"lora_unet_conv_out.lora_down.weight": down, "lora_unet_conv_out.lora_up.weight": up},
                 path, metadata=metadata)


@pytest.fixture
def lora_dir(tmp_path):
    model = tiny_model(seed=4)
    (tmp_path / "sub").mkdir()
    _lora_file(model, tmp_path / "style.safetensors", 1)
    _lora_file(model, tmp_path / "sub" / "detail.pt", 2)
    (tmp_path / "notes.txt").write_text("not a LoRA")
    return model, tmp_path


def test_unknown_name_lists_the_folder_and_its_loras(lora_dir):
    model, folder = lora_dir
    assert resolve_lora("detail", folder) == folder / "sub" / "detail.pt"
    found = rf"no LoRA named 'stlye' in {folder} \(found: detail, style\)"
    with pytest.raises(LoraNotFoundError, match=found):
        LoraManager(model, folder).apply_prompt("<lora:stlye:1>")
    with pytest.raises(LoraNotFoundError, match="folder .*missing does not exist.*--lora-dir"):
        resolve_lora("style", folder / "missing")


def test_a1111_alias_from_the_kohya_metadata(lora_dir):
    model, folder = lora_dir
    _lora_file(model, folder / "ink_v3-000010.safetensors", 3, output_name="ink")
    assert resolve_lora("ink", folder) == folder / "ink_v3-000010.safetensors"
    assert resolve_lora("ink_v3-000010", folder) == folder / "ink_v3-000010.safetensors"


def test_manager_follows_the_prompt_and_unmerges_exactly(lora_dir):
    model, folder = lora_dir
    weight = model.model.diffusion_model.out[2].weight
    original = weight.clone()
    manager = LoraManager(model, folder)
    assert manager.apply_prompt("a cat <lora:style:0.5>") == "a cat "
    with_style = weight.clone()
    handles = active_loras(model)
    manager.apply_prompt("another cat <lora:style:0.5>")  # same set: nothing re-merged
    assert active_loras(model) == handles and torch.equal(weight, with_style)
    manager.apply_prompt("<lora:detail:1> <lora:style:0.5>")
    assert [(n, w) for n, _, w in manager.applied] == [("detail", 1.0), ("style", 0.5)]
    manager.apply_prompt("<lora:style:0.5>")
    assert torch.equal(weight, with_style)  # rebuilt from the original: same bits as before
    manager.apply_prompt("plain")
    assert torch.equal(weight, original) and active_loras(model) == []


def test_a_batch_uses_the_first_prompts_loras_as_a1111(lora_dir):
    model, folder = lora_dir
    manager = LoraManager(model, folder)
    texts = manager.apply_prompts(["a <lora:style:0.5>", "b <lora:detail>", "c"])
    assert texts == ["a ", "b ", "c"] and [n for n, _, _ in manager.applied] == ["style"]


def test_manager_checks_every_file_before_changing_weights(lora_dir):
    model, folder = lora_dir
    manager = LoraManager(model, folder)
    manager.apply_prompt("<lora:style:1>")
    merged = model.model.diffusion_model.out[2].weight.clone()
    with pytest.raises(LoraNotFoundError):
        manager.apply_prompt("<lora:detail:1> <lora:nope:1>")
    assert torch.equal(model.model.diffusion_model.out[2].weight, merged)
    assert [n for n, _, _ in manager.applied] == ["style"]


def test_fixed_loras_come_first_and_count_in_the_hashes(lora_dir):
    model, folder = lora_dir
    manager = LoraManager(model, folder, fixed=[(folder / "sub" / "detail.pt", 0.3)])
    manager.apply_prompt("x <lora:style>")
    assert [(n, w) for n, _, w in manager.applied] == [("detail", 0.3), ("style", 1.0)]
    assert manager.hashes_text() == (f"detail: {lora_shorthash(folder / 'sub' / 'detail.pt')}, "
                                     f"style: {lora_shorthash(folder / 'style.safetensors')}")
    with pytest.raises(LoraNotFoundError, match="does not exist"):
        LoraManager(model, folder, fixed=[(folder / "gone.safetensors", 1.0)]).apply_prompt("x")


def test_shorthash_is_a1111s_addnet_hash(lora_dir, tmp_path):
    model, folder = lora_dir
    st = folder / "style.safetensors"
    data = st.read_bytes()
    header = int.from_bytes(data[:8], "little")
    # sd-webui-additional-networks / kohya: sha256 of what follows the 8-byte length + header
    assert lora_shorthash(st) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert lora_shorthash(st) != hashlib.sha256(data).hexdigest()[:12]
    pt = folder / "sub" / "detail.pt"
    assert lora_shorthash(pt) == hashlib.sha256(pt.read_bytes()).hexdigest()[:12]
    # the metadata (header) does not change it
    other = _lora_file(model, tmp_path / "renamed.safetensors", 1)
    assert other.read_bytes() != data and lora_shorthash(other) == lora_shorthash(st)


def test_hashes_text_is_a1111s(lora_dir):
    _, folder = lora_dir
    st = folder / "style.safetensors"
    short = lora_shorthash(st)
    assert lora_hashes_text([("my:st,yle", st), ("b", st)]) == f"mystyle: {short}, b: {short}"
    assert lora_hashes_text([]) is None
