"""scripts/inpaint_pww.py's front end, and --vae / --v-pred on the generation scripts (in process)."""

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

from pww_ldm import cli
from pww_ldm.inpaint_cli import main
from pww_ldm.masking import prepare_mask

PROMPT = "a photo of a cat and a dog"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint_cli")
    write_checkpoint(tiny_model(seed=11), root / "tiny.ckpt")
    save_config(tiny_config(), root / "tiny.yaml")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "init.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[8:40, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.new("L", (64, 48)).save(root / "black.png")
    vae = {k[len("first_stage_model."):]: v.contiguous() for k, v in tiny_model(seed=4).state_dict().items()
           if k.startswith("first_stage_model.")}
    save_file(vae, str(root / "other.vae.safetensors"))
    return root


def test_inpaint_script_keeps_the_unmasked_pixels(files, tmp_path):
    argv = ["--ckpt", files / "tiny.ckpt", "--prompt", PROMPT, "--steps", 2, "--quiet",
            "--init-img", files / "init.png", "--mask", files / "mask.png", "--mask-blur", 2,
            "--outdir", tmp_path, "--vae", files / "other.vae.safetensors"]
    assert main(list(map(str, argv))) == 0
    out = Image.open(tmp_path / "samples" / "00000.png")
    keep = np.asarray(prepare_mask(Image.open(files / "mask.png"), (64, 48), 2)) == 0
    init = np.asarray(Image.open(files / "init.png"))
    assert np.array_equal(np.asarray(out.convert("RGB"))[keep], init[keep])
    params = out.info["parameters"]
    assert "Mask blur: 2" in params and "Denoising strength: 0.75" in params
    assert "VAE: other.vae.safetensors" in params and "VAE hash: " in params


def test_inpaint_script_refuses_a_black_mask_before_loading(files, tmp_path, capsys):
    argv = ["--ckpt", files / "missing.ckpt", "--init-img", files / "init.png",
            "--mask", files / "black.png", "--outdir", tmp_path]
    assert main(list(map(str, argv))) == 2
    assert "black everywhere" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_v_pred_flag_reaches_the_model(files, monkeypatch):
    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise cli.UsageError("stop here")

    monkeypatch.setattr("pww_ldm.load_model", fake_load)
    argv = ["--ckpt", files / "tiny.ckpt", "--prompt", PROMPT, "--v-pred", "--vae", "x.vae.pt"]
    assert cli.main(list(map(str, argv))) == 2
    assert seen["parameterization"] == "v" and seen["vae"] == "x.vae.pt"
