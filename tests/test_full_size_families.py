"""Full-size SD 2.x and inpainting checkpoints (random weights) in the public file layouts.

Slow (SD 2.x: 1.3 G parameters, written at fp16): marked `slow`, kept in CI.
"""

import warnings

import pytest
import torch
from oracle import diffusers_unet
from safetensors.torch import save_file
from tiny import randomize_

from pww_ldm.config import instantiate_from_config
from pww_ldm.loading import family_config, load_model

pytestmark = pytest.mark.slow


def full_model(family: str, dtype=torch.float32, seed: int = 0):
    with torch.device("meta"):
        model = instantiate_from_config(family_config(family).model)
    model.to_empty(device="cpu")
    model.register_schedule("linear", 1000, 0.00085, 0.012)
    return randomize_(model.to(dtype), seed)


def test_full_size_sd2_unet_matches_diffusers():
    model = full_model("sd2")
    unet = model.model.diffusion_model
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724  # SD 2.x's UNet
    state = {k: v for k, v in model.state_dict().items() if k.startswith("model.")}
    del model.cond_stage_model, model.first_stage_model
    oracle = diffusers_unet(family_config("sd2"), state)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 24, 20, generator=g)
    t = torch.tensor([321.0])
    ctx = torch.randn(1, 77, 1024, generator=g)
    with torch.no_grad():
        ours = model.apply_model(x, t, ctx)
        theirs = oracle(x, t, encoder_hidden_states=ctx).sample
    assert ours.abs().mean() > 1e-3
    assert (ours - theirs).abs().max().item() < 1e-4


def _file_dict(model) -> dict:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _check_loaded(loaded, source) -> None:
    ours = loaded.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith(("model.", "cond_stage_model.")):
            assert torch.equal(ours[key], value), key  # fp16 in, fp16 out: every weight in place


def test_full_size_sd2_files_load_without_warnings(tmp_path):
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    source = full_model("sd2", torch.float16)
    sd = _file_dict(source)
    torch.save({"epoch": 3, "global_step": 875000, "state_dict": sd,
                "callbacks": {ModelCheckpoint: {"best_model_score": None}}}, tmp_path / "sd2.ckpt")
    save_file({**sd, "v_pred": torch.tensor([])}, str(tmp_path / "sd2-768-v.safetensors"))
    vae = {k[len("first_stage_model."):]: v.float() for k, v in sd.items()
           if k.startswith("first_stage_model.")}
    del sd
    torch.save({"state_dict": {**vae, "loss.logvar": torch.zeros(())}}, tmp_path / "ft.vae.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(tmp_path / "sd2.ckpt", device="cpu", dtype="fp16")
        _check_loaded(loaded, source)
        # no file hint: A1111's UNet test decides, whichever way random weights fall
        assert loaded.family == {"eps": "sd2", "v": "sd2-v"}[loaded.parameterization]
        assert loaded.get_learned_conditioning(["a cat"]).shape == (1, 77, 1024)
        del loaded
        loaded = load_model(tmp_path / "sd2-768-v.safetensors", device="cpu", dtype="fp16",
                            vae=tmp_path / "ft.vae.pt")
    assert loaded.family == "sd2-v" and loaded.parameterization == "v"
    _check_loaded(loaded, source)
    key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(loaded.state_dict()[key], vae[key[len("first_stage_model."):]])


def test_full_size_inpainting_safetensors_loads(tmp_path):
    source = full_model("sd1-inpainting", torch.float16)
    save_file(_file_dict(source), str(tmp_path / "sd-v1-5-inpainting.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(tmp_path / "sd-v1-5-inpainting.safetensors", device="cpu", dtype="fp16")
    assert loaded.family == "sd1-inpainting" and type(loaded).__name__ == "LatentInpaintDiffusion"
    assert loaded.model.diffusion_model.in_channels == 9
    _check_loaded(loaded, source)
