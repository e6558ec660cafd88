"""Which checkpoints load: the family inferred from the weights, the overrides (parameterization,
VAE) and a clear error for every other kind of file."""

import warnings

import pytest
import torch
from safetensors.torch import save_file
from tiny import save_config, tiny_config, tiny_model, write_checkpoint
from tiny_families import tiny_family_config, tiny_family_model

from pww_ldm import checkpoint as ck
from pww_ldm.infotext import model_settings, short_hash
from pww_ldm.loading import CROSS_K, OPENCLIP_QKV, UNET_IN, infer_family, load_model, read_vae

VAE_KEY = "first_stage_model.decoder.conv_out.weight"


def _keys(in_channels: int = 4, width: int | None = 768, openclip: bool = False, **extra) -> dict:
    sd = {UNET_IN: torch.zeros(320, in_channels, 3, 3), **extra}
    if width is not None:
        sd[CROSS_K] = torch.zeros(320, width)
    if openclip:
        sd[OPENCLIP_QKV] = torch.zeros(3072, 1024)
    return sd


@pytest.mark.parametrize("keys,family", [
    (_keys(), "sd1"), (_keys(9), "sd1-inpainting"), (_keys(width=1024, openclip=True), "sd2"),
    (_keys(9, width=1024, openclip=True), "sd2-inpainting"), (_keys(width=None), "sd1")])
def test_family_is_inferred_from_the_weights(keys, family):
    assert infer_family(keys, "m.ckpt") == family


@pytest.mark.parametrize("keys,match", [
    (_keys(8), "instruct-pix2pix.*8 input channels"),
    (_keys(**{"conditioner.embedders.0.transformer.x": torch.zeros(1)}), "SDXL"),
    (_keys(**{"control_model.input_hint_block.0.weight": torch.zeros(1)}), "ControlNet"),
    ({"control_model.input_blocks.0.0.weight": torch.zeros(1)}, "ControlNet"),
    (_keys(width=1024), "CLIP text encoder with UNet context width 1024"),
    (_keys(width=768, openclip=True), "OpenCLIP text encoder with UNet context width 768"),
    (_keys(**{"depth_model.model.x": torch.zeros(1)}), "depth")])
def test_other_architectures_are_named(keys, match):
    with pytest.raises(ck.ArchitectureMismatchError, match=match):
        infer_family(keys, "m.ckpt")


def test_lora_and_vae_files_are_named():
    with pytest.raises(ck.NotACheckpointError, match="LoRA"):
        infer_family({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(1)}, "l.safetensors")
    with pytest.raises(ck.NotACheckpointError, match="standalone VAE.*--vae"):
        infer_family({"encoder.conv_in.weight": torch.zeros(1)}, "v.safetensors")


def _save(model, path, **extra):
    save_file({**{k: v.contiguous() for k, v in model.state_dict().items()}, **extra}, str(path))
    return path


@pytest.mark.parametrize("family", ["sd2", "sd2-v", "sd1-inpainting", "sd2-inpainting"])
def test_tiny_family_checkpoint_loads_with_its_config(tmp_path, family):
    model = tiny_family_model(family, seed=2)
    path = _save(model, tmp_path / f"{family}.safetensors")
    save_config(tiny_family_config(family), tmp_path / f"{family}.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(path, device="cpu")
    assert loaded.parameterization == ("v" if family == "sd2-v" else "eps")
    assert type(loaded).__name__ == type(model).__name__
    theirs = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in loaded.state_dict().items())


def test_parameterization_override(tmp_path):
    model = tiny_family_model("sd2", seed=2)
    path = _save(model, tmp_path / "m.safetensors")
    cfg = save_config(tiny_family_config("sd2"), tmp_path / "cfg.yaml")
    assert load_model(path, config=cfg, device="cpu", parameterization="v").parameterization == "v"
    with pytest.raises(ValueError, match="'eps' or 'v'"):
        load_model(path, config=cfg, device="cpu", parameterization="x0")


@pytest.fixture(scope="module")
def vae_source():
    return tiny_model(seed=9)


@pytest.mark.parametrize("kind", ["vae.pt", "vae.safetensors", "whole.ckpt"])
def test_vae_override(tmp_path, vae_source, kind):
    ckpt = write_checkpoint(tiny_model(seed=1), tmp_path / "base.safetensors")
    config = save_config(tiny_config(), tmp_path / "tiny.yaml")
    first = {k[len("first_stage_model."):]: v for k, v in vae_source.state_dict().items()
             if k.startswith("first_stage_model.")}
    vae_path = tmp_path / f"my.{kind}"
    if kind == "vae.pt":  # as released: Lightning-wrapped, with training leftovers
        torch.save({"state_dict": {**first, "loss.logvar": torch.zeros(()),
                                   "model_ema.decay": torch.tensor(0.9)}}, vae_path)
    elif kind == "vae.safetensors":
        save_file({k: v.contiguous() for k, v in first.items()}, str(vae_path))
    else:
        write_checkpoint(vae_source, vae_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(ckpt, config=config, device="cpu", vae=vae_path)
    assert torch.equal(model.state_dict()[VAE_KEY], vae_source.state_dict()[VAE_KEY])
    assert not torch.equal(model.state_dict()[VAE_KEY], tiny_model(seed=1).state_dict()[VAE_KEY])
    settings = model_settings(model)
    assert settings["VAE"] == f"my.{kind}" and settings["VAE hash"] == short_hash(vae_path)
    assert list(settings) == ["Model hash", "Model", "VAE hash", "VAE"]  # A1111's order


def test_bad_vae_files_are_named(tmp_path):
    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)},
              str(tmp_path / "diffusers.safetensors"))
    with pytest.raises(ck.ArchitectureMismatchError, match="diffusers-format VAE"):
        read_vae(tmp_path / "diffusers.safetensors")
    save_file({"lora_up.weight": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ck.NotACheckpointError, match="no VAE weights"):
        read_vae(tmp_path / "x.safetensors")
    ckpt = write_checkpoint(tiny_model(seed=1), tmp_path / "base.safetensors")
    small = {k: v for k, v in read_vae(ckpt).items() if not k.startswith("decoder.")}
    save_file({k: v.contiguous() for k, v in small.items()}, str(tmp_path / "half.vae.safetensors"))
    with pytest.raises(ck.StateDictMismatchError, match="(?s)half.vae.safetensors.*missing"):
        load_model(ckpt, config=save_config(tiny_config(), tmp_path / "t.yaml"), device="cpu",
                   vae=tmp_path / "half.vae.safetensors")


def test_original_stability_targets_build_our_classes():
    from pww_ldm.config import instantiate_from_config
    from pww_ldm.models.latent_diffusion import LatentInpaintDiffusion
    from pww_ldm.models.open_clip import FrozenOpenCLIPEmbedder

    cfg = tiny_family_config("sd2-inpainting")
    cfg.model.target = "ldm.models.diffusion.ddpm.LatentInpaintDiffusion"
    cfg.model.params.cond_stage_config.target = "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"
    model = instantiate_from_config(cfg.model)
    assert isinstance(model, LatentInpaintDiffusion)
    assert isinstance(model.cond_stage_model, FrozenOpenCLIPEmbedder)
    assert model.cond_stage_model.clip_skip == 2  # layer: "penultimate"


def test_sd2_infotext_names_clip_skip_only_away_from_its_penultimate_layer():
    from pww_ldm import generate
    from pww_ldm.config import instantiate_from_config

    model = instantiate_from_config(tiny_family_config("sd2").model).eval()
    kw = dict(steps=1, width=64, height=64, seed=0, progress=False)
    assert model.clip_skip == 2  # the SD 2.x config's own layer: A1111 writes no "Clip skip"
    assert "Clip skip" not in generate(model, "a cat", **kw)[0].info["parameters"]
    model.clip_skip = 3
    assert "Clip skip: 3" in generate(model, "a cat", **kw)[0].info["parameters"]
    model.clip_skip = 1  # the last layer is not SD 2.x's own: say so
    assert "Clip skip: 1" in generate(model, "a cat", **kw)[0].info["parameters"]
