"""A non-editable install (a built wheel, used from another folder) has its data and loads.

The wheel is built from a copy of the files a build reads (pww_ldm/, setup.cfg, pyproject.toml,
README.md), not from the working tree itself: an in-tree build writes build/ and *.egg-info into
the shared tree, and setuptools' build/lib keeps files deleted since, which would then ship.

Checkpoint without a YAML beside it: the fallback is full-size SD v1, which a tiny checkpoint
does not fit; a full-size one (1.07 B parameters, fp16) was measured at 20 s to write, 9 s to
load, 2.1 GB of disk and 2.4 GB of memory. The install-specific step is finding the fallback
config, so the tiny checkpoint is loaded without a YAML and must reach the key check against the
full-size v1 model built from the packaged config (its error names both shapes); loading it
with its own config then shows the installed package loads weights end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from tiny import save_config, tiny_config, tiny_model, write_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ["setup.cfg", "pyproject.toml", "README.md"]
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Wheel built from a copy of the sources and installed into <tmp>/site (no dependencies)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO / "pww_ldm", src / "pww_ldm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in BUILD_INPUTS:
        shutil.copy(REPO / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src))
    (wheel,) = (tmp / "dist").glob("pww_ldm-*.whl")
    _pip("install", "--no-deps", "--target", str(tmp / "site"), str(wheel))
    return {"tmp": tmp, "wheel": wheel, "site": tmp / "site"}


def test_wheel_ships_vocabulary_and_v1_config(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        config = whl.read("pww_ldm/data/configs/v1-inference.yaml")
    assert {"pww_ldm/data/clip/bpe_simple_vocab_16e6.txt.gz", "pww_ldm/data/clip/NOTICE.md",
            "pww_ldm/data/configs/v1-inference.yaml"} <= names
    # configs/v1-inference.yaml (the CompVis place) is the same file, not a second copy.
    assert config == (REPO / "configs" / "v1-inference.yaml").read_bytes()


CHILD = textwrap.dedent("""
    import hashlib, json, sys
    import pww_ldm
    from pww_ldm.checkpoint import StateDictMismatchError
    from pww_ldm.infotext import model_settings
    from pww_ldm.loading import default_v1_config, load_model
    from pww_ldm.models.tokenizer import get_tokenizer
    ckpt, cfg, unet_in = sys.argv[1:4]
    out = {"file": pww_ldm.__file__, "no_yaml_error": None}
    unet = default_v1_config().model.params.unet_config.params
    out["v1"] = {k: unet[k] if isinstance(unet[k], int) else list(unet[k])
                 for k in ("model_channels", "channel_mult", "attention_resolutions", "context_dim")}
    try:
        load_model(ckpt, device="cpu")
    except StateDictMismatchError as e:
        out["no_yaml_error"] = str(e)
    model = load_model(ckpt, config=cfg, device="cpu")
    weight = model.state_dict()[unet_in].float().contiguous()
    out["weight_sha256"] = hashlib.sha256(weight.numpy().tobytes()).hexdigest()
    out["model_settings"] = model_settings(model)
    out["tokens"] = get_tokenizer().encode("a photo of a cat")
    out["modules"] = sorted({m.__file__ for n, m in sys.modules.items()
                             if n.startswith("pww_ldm") and getattr(m, "__file__", None)})
    print(json.dumps(out))
""")


def test_installed_package_loads_a_checkpoint_with_no_yaml_beside_it(installed):
    tmp, site = installed["tmp"], installed["site"]
    (tmp / "weights").mkdir()
    ckpt = write_checkpoint(tiny_model(context_dim=768), tmp / "weights" / "tiny.safetensors",
                            ema=False, dtype=torch.float16)
    cfg = save_config(tiny_config(context_dim=768), tmp / "tiny-config.yaml")
    assert [p.name for p in ckpt.parent.iterdir()] == ["tiny.safetensors"]
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(cfg), UNET_IN], cwd=tmp, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])

    assert Path(out["file"]).is_relative_to(site)
    assert out["modules"] and all(Path(f).is_relative_to(site) for f in out["modules"])
    # SD v1 (CompVis v1-inference.yaml): 320 channels, x1 x2 x4 x4, attention at 4, 2, 1, CLIP 768.
    assert out["v1"] == {"model_channels": 320, "channel_mult": [1, 2, 4, 4],
                         "attention_resolutions": [4, 2, 1], "context_dim": 768}
    assert f"{UNET_IN}: file (32, 4, 3, 3) vs model (320, 4, 3, 3)" in (out["no_yaml_error"] or "")

    from safetensors.torch import load_file
    saved = load_file(str(ckpt))[UNET_IN].float().contiguous()
    assert out["weight_sha256"] == hashlib.sha256(saved.numpy().tobytes()).hexdigest()
    assert out["model_settings"] == {"Model hash": hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10],
                                     "Model": "tiny"}
    assert out["tokens"] == [320, 1125, 539, 320, 2368]  # CLIP BPE ids of "a photo of a cat"
