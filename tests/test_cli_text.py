"""The text flags of the scripts: --clip-skip and --embeddings-dir, on a tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

import pww_ldm
from pww_ldm import cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    path = write_checkpoint(tiny_model(seed=8), folder / "tiny.safetensors")
    save_config(tiny_config(), folder / "tiny.yaml")
    return path


def run(capsys, ckpt, tmp_path, *flags):
    args = ["--ckpt", ckpt, "--steps", 2, "--H", 64, "--W", 64, "--quiet", "--outdir", tmp_path]
    status = cli.main([str(a) for a in [*args, *flags]])
    return status, capsys.readouterr().err


def test_clip_skip_changes_the_image_and_is_recorded(capsys, ckpt, tmp_path):
    assert run(capsys, ckpt, tmp_path / "one", "--prompt", "a cat", "--clip-skip", 1)[0] == 0
    assert run(capsys, ckpt, tmp_path / "two", "--prompt", "a cat", "--clip-skip", 2)[0] == 0
    one = Image.open(tmp_path / "one" / "samples" / "00000.png")
    two = Image.open(tmp_path / "two" / "samples" / "00000.png")
    assert "Clip skip" not in one.info["parameters"]  # A1111 writes it only when not 1
    assert "Clip skip: 2" in two.info["parameters"]
    assert not np.array_equal(np.asarray(one), np.asarray(two))


def test_clip_skip_beyond_the_layers_is_an_error(capsys, ckpt, tmp_path):
    status, err = run(capsys, ckpt, tmp_path, "--prompt", "a cat", "--clip-skip", 9)
    assert status == 2 and err.startswith("error: --clip-skip") and not (tmp_path / "samples").exists()


def test_missing_embeddings_dir_fails_before_the_model_loads(capsys, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(pww_ldm, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    status, err = run(capsys, ckpt, tmp_path, "--prompt", "a cat", "--embeddings-dir", tmp_path / "nope")
    assert status == 2 and "--embeddings-dir" in err and "does not exist" in err


def test_an_embedding_is_used_by_name_and_can_be_a_region_label(capsys, ckpt, tmp_path):
    folder = tmp_path / "emb"
    folder.mkdir()
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    torch.save({"string_to_param": {"*": vectors}, "name": "mytoken"}, folder / "mytoken.pt")
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[8:40, 8:40] = (255, 0, 0)
    Image.fromarray(arr).save(tmp_path / "map.png")
    common = ["--color-map", tmp_path / "map.png", "--color-context", '{"#ff0000": "mytoken,2"}']
    status, err = run(capsys, ckpt, tmp_path / "with", "--prompt", "a mytoken", "--embeddings-dir", folder,
                      *common)
    assert status == 0, err
    # without the embedding, "mytoken" is plain text: a different conditioning, a different image
    status, err = run(capsys, ckpt, tmp_path / "without", "--prompt", "a mytoken", *common)
    assert status == 0, err
    with_emb = np.asarray(Image.open(tmp_path / "with" / "samples" / "00000.png"))
    without = np.asarray(Image.open(tmp_path / "without" / "samples" / "00000.png"))
    assert not np.array_equal(with_emb, without)


def write_lora(path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"
    save_file({f"{key}.lora_down.weight": torch.randn(2, 32, generator=g),
               f"{key}.lora_up.weight": torch.randn(32, 2, generator=g),
               f"{key}.alpha": torch.tensor(2.0)}, str(path))
    return path


def test_lora_flag_and_prompt_tag_give_the_same_image(capsys, ckpt, tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    lora = write_lora(folder / "style.safetensors")
    assert run(capsys, ckpt, tmp_path / "flag", "--prompt", "a cat", "--lora", f"{lora}:0.7")[0] == 0
    status, err = run(capsys, ckpt, tmp_path / "tag", "--prompt", "a cat <lora:style:0.7>",
                      "--lora-dir", folder)
    assert status == 0, err
    assert run(capsys, ckpt, tmp_path / "none", "--prompt", "a cat")[0] == 0
    image = {name: Image.open(tmp_path / name / "samples" / "00000.png") for name in ("flag", "tag", "none")}
    assert np.array_equal(np.asarray(image["flag"]), np.asarray(image["tag"]))
    assert not np.array_equal(np.asarray(image["flag"]), np.asarray(image["none"]))
    assert 'Lora hashes: "style: ' in image["tag"].info["parameters"]


def test_unknown_lora_fails_before_the_model_loads(capsys, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(pww_ldm, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    status, err = run(capsys, ckpt, tmp_path, "--prompt", "a cat <lora:nope:1>", "--lora-dir", tmp_path)
    assert status == 2 and "nope" in err and str(tmp_path) in err
    status, err = run(capsys, ckpt, tmp_path, "--prompt", "a cat", "--lora", tmp_path / "x.safetensors")
    assert status == 2 and "--lora" in err
