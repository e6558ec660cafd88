"""Loading checkpoints: formats, key normalisation, and every kind of bad file."""

import os
import pickle
import warnings

import pytest
import torch
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

from pww_ldm import checkpoint as ck
from pww_ldm.loading import load_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture()
def config_path(tmp_path):
    return save_config(tiny_config(), tmp_path / "tiny.yaml")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,lightning", [("m.ckpt", True), ("m.ckpt", False),
                                            ("m.safetensors", False)])
def test_loads_real_layout_without_warnings(model, tmp_path, config_path, name, lightning):
    path = write_checkpoint(model, tmp_path / name, lightning=lightning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(path, config=config_path, device="cpu")
    assert _same_weights(model, loaded)
    assert not loaded.training and loaded.unet_dtype == torch.float32
    assert loaded.alphas_cumprod.dtype == torch.float32


def test_use_ema_replaces_unet_weights(model, tmp_path, config_path):
    path = write_checkpoint(model, tmp_path / "m.ckpt")
    loaded = load_model(path, config=config_path, device="cpu", use_ema=True)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key] + 1.0)
    vae_key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(loaded.state_dict()[vae_key], model.state_dict()[vae_key])


def test_config_beside_weights_is_used(model, tmp_path):
    path = write_checkpoint(model, tmp_path / "m.safetensors")
    save_config(tiny_config(), tmp_path / "m.yaml")
    assert _same_weights(model, load_model(path, device="cpu"))


def test_old_clip_keys_and_missing_schedule_are_normalised(model, tmp_path, config_path):
    sd = model.state_dict()
    old = {}
    for k, v in sd.items():
        if k == "alphas_cumprod_prev":
            continue  # some converters drop schedule buffers: they are derived from the config
        old[k.replace("transformer.text_model.", "transformer.")] = v
    torch.save({"state_dict": old}, tmp_path / "old.ckpt")
    assert _same_weights(model, load_model(tmp_path / "old.ckpt", config=config_path, device="cpu"))


def test_bf16_dtype_keeps_schedule_and_vae_float32(model, tmp_path, config_path):
    path = write_checkpoint(model, tmp_path / "m.ckpt")
    loaded = load_model(path, config=config_path, device="cpu", dtype="bf16")
    assert loaded.unet_dtype == torch.bfloat16
    assert loaded.alphas_cumprod.dtype == torch.float32
    assert loaded.first_stage_model.decoder.conv_out.weight.dtype == torch.float32


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(ck.UnsafeCheckpointError, match="posix.system|os.system|system"):
        load_model(path, device="cpu")
    assert not (tmp_path / "pwned_marker").exists()


def test_raw_pickle_with_global_is_refused(tmp_path):
    path = tmp_path / "evil2.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "f": _Evil()}, f)
    with pytest.raises(ck.CheckpointError):
        load_model(path, device="cpu")


def test_truncated_files(model, tmp_path, config_path):
    for name in ("t.ckpt", "t.safetensors"):
        path = write_checkpoint(model, tmp_path / name)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ck.CorruptCheckpointError, match=name):
            load_model(path, config=config_path, device="cpu")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(ck.CorruptCheckpointError):
        load_model(tmp_path / "notes.ckpt", device="cpu")
    torch.save({"foo": "bar"}, tmp_path / "dict.ckpt")
    with pytest.raises(ck.NotACheckpointError, match="dict.ckpt"):
        load_model(tmp_path / "dict.ckpt", device="cpu")
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae.ckpt")
    with pytest.raises(ck.NotACheckpointError, match="VAE"):
        load_model(tmp_path / "vae.ckpt", device="cpu")
    with pytest.raises(ck.CheckpointNotFoundError, match="models/ldm/stable-diffusion-v1"):
        load_model(tmp_path / "missing.ckpt", device="cpu")


def test_other_architectures_are_named(tmp_path):
    # SD v1 / 2.x and their inpainting models load (tests/test_families.py); others are named.
    unet_in = "model.diffusion_model.input_blocks.0.0.weight"
    torch.save({unet_in: torch.zeros(320, 8, 3, 3)}, tmp_path / "ip2p.ckpt")
    with pytest.raises(ck.ArchitectureMismatchError, match="instruct-pix2pix.*8 input channels"):
        load_model(tmp_path / "ip2p.ckpt", device="cpu")
    torch.save({unet_in: torch.zeros(320, 4, 3, 3), "conditioner.embedders.0.x": torch.zeros(1)},
               tmp_path / "sdxl.ckpt")
    with pytest.raises(ck.ArchitectureMismatchError, match="SDXL"):
        load_model(tmp_path / "sdxl.ckpt", device="cpu")


def test_wrong_shapes_and_keys_are_listed(model, tmp_path, config_path):
    sd = dict(model.state_dict())
    sd["model.diffusion_model.out.2.weight"] = torch.zeros(1, 2, 3, 3)
    del sd["first_stage_model.quant_conv.bias"]
    sd["something.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.ckpt")
    with pytest.raises(ck.StateDictMismatchError) as info:
        load_model(tmp_path / "bad.ckpt", config=config_path, device="cpu")
    text = str(info.value)
    assert "first_stage_model.quant_conv.bias" in text and "something.extra" in text
    assert "model.diffusion_model.out.2.weight: file (1, 2, 3, 3)" in text
