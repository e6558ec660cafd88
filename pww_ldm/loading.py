"""`load_model`: an SD v1 .ckpt / .safetensors -> a ready LatentDiffusion, offline.

Order of the config: the one given; else a `.yaml` of the same name beside the weights (the
habit of the SD web UIs, and how the bundled demo model ships); else inferred from the weights.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .checkpoint import (
    ArchitectureMismatchError,
    NotACheckpointError,
    StateDictMismatchError,
    normalize_keys,
    read_state_dict,
)
from .config import instantiate_from_config
from .kernels import set_attention_kernel
from .models.latent_diffusion import LatentDiffusion

# Package data (setup.cfg), so a wheel install finds it; configs/v1-inference.yaml links to it.
V1_CONFIG = "data/configs/v1-inference.yaml"
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CROSS_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def default_v1_config() -> Any:
    """The SD v1 inference config, CompVis's configs/v1-inference.yaml, read from the package."""
    return OmegaConf.create(resources.files("pww_ldm").joinpath(V1_CONFIG).read_text(encoding="utf-8"))


def infer_config(state_dict: dict[str, torch.Tensor], path: str | os.PathLike = "") -> Any:
    """Pick the config for these weights; today SD v1, else a clear error naming the keys.

    This is where SD 2.x / inpainting configs will plug in.
    """
    if UNET_IN not in state_dict:
        hint = ""
        if any(k.startswith(("encoder.", "decoder.")) for k in state_dict):
            hint = " It looks like a standalone VAE."
        elif any("lora" in k.lower() for k in state_dict):
            hint = " It looks like a LoRA."
        raise NotACheckpointError(
            f"{path}: no Stable Diffusion UNet in this file (no key {UNET_IN}).{hint} "
            "Pass a full SD v1 checkpoint (.ckpt or .safetensors).")
    if any(k.startswith("conditioner.") for k in state_dict):
        raise ArchitectureMismatchError(f"{path}: this is an SDXL checkpoint; only SD v1 is supported")
    in_channels = state_dict[UNET_IN].shape[1]
    if in_channels != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(in_channels, "a non-standard")
        raise ArchitectureMismatchError(
            f"{path}: {kind} UNet ({UNET_IN} has {in_channels} input channels, SD v1 has 4); "
            "not supported yet: use a plain SD v1 checkpoint")
    if CROSS_K in state_dict and state_dict[CROSS_K].shape[1] != 768:
        width = state_dict[CROSS_K].shape[1]
        name = "an SD 2.x" if width == 1024 else "a non-v1"
        raise ArchitectureMismatchError(
            f"{path}: {name} checkpoint ({CROSS_K} has context width {width}, SD v1 has 768); "
            "only SD v1 is supported")
    return default_v1_config()


def _find_config(path: Path, config: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    if config is not None:
        return OmegaConf.load(config) if isinstance(config, (str, os.PathLike)) else config
    beside = path.with_suffix(".yaml")
    if beside.is_file():
        return OmegaConf.load(beside)
    return infer_config(state_dict, path)


def _check_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return

    def listed(title: str, keys: list[str]) -> str:
        more = f" ... and {len(keys) - 8} more" if len(keys) > 8 else ""
        return f"\n  {title} ({len(keys)}): " + ", ".join(keys[:8]) + more if keys else ""

    raise StateDictMismatchError(
        f"{path}: the weights do not fit the config" + listed("missing", missing)
        + listed("unexpected", unexpected) + listed("wrong shape", wrong)
        + "\nPass the config the checkpoint was trained with (--config), or an SD v1 checkpoint.")


def _materialize_leftovers(model: torch.nn.Module) -> None:
    """Buffers not stored in checkpoints (CLIP's position_ids) are rebuilt after a meta build."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                if name != "position_ids":
                    raise StateDictMismatchError(f"buffer {name} of {type(module).__name__} "
                                                 "was not in the checkpoint")
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape),
                                       persistent=False)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | os.PathLike, config: Any = None, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, use_ema: bool = False,
               attention: str = "auto", vae_dtype: torch.dtype | str | None = None,
               channels_last: bool = False, compile: bool = False) -> LatentDiffusion:
    """Load an SD v1 checkpoint into a LatentDiffusion in eval mode.

    path: .ckpt or .safetensors (Lightning checkpoints too). config: a path, an OmegaConf/dict
    config, or None (see module doc). dtype: of the UNet and text encoder; default float32 on
    CPU, float16 on CUDA. vae_dtype: default float32 everywhere (fp16 SD VAEs can decode to NaN).
    attention: kernel name (auto, sdpa, xformers, math). The schedule stays float32.
    compile: torch.compile the UNet in place (keys unchanged; the first call is slow).
    The model's `checkpoint_path` is the file's absolute path (infotext.model_settings names the
    model in PNG metadata from it).
    """
    path = Path(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = _as_dtype(dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    vae_dtype = _as_dtype(vae_dtype) or torch.float32
    state_dict = normalize_keys(read_state_dict(path), use_ema=use_ema)
    cfg = _find_config(path, config, state_dict)
    model_cfg = cfg.model if "model" in cfg else cfg
    # Build on the meta device: no time spent initialising ~1B random weights we overwrite.
    with torch.device("meta"):
        model = instantiate_from_config(model_cfg)
    if not isinstance(model, LatentDiffusion):
        raise ArchitectureMismatchError(f"config target is {type(model).__name__}, not LatentDiffusion")
    for name, value in model.state_dict().items():
        if not value.is_meta:  # the schedule buffers, derived from the config, may be absent
            state_dict.setdefault(name, value)
    _check_keys(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True, assign=True)
    _materialize_leftovers(model)
    model.model.to(device=device, dtype=dtype)
    model.cond_stage_model.to(device=device, dtype=dtype)
    model.first_stage_model.to(device=device, dtype=vae_dtype)
    model.to(device)  # schedule buffers: device only, they stay float32
    if channels_last:
        model.model.to(memory_format=torch.channels_last)
    set_attention_kernel(model, attention)
    model.eval().requires_grad_(False)
    if compile:
        model.model.diffusion_model.compile()
    # Absolute, links not followed: the name is the one the user chose (a hub cache links it to a
    # hash-named blob); infotext.short_hash follows the link to hash the content.
    model.checkpoint_path = Path(os.path.abspath(path))
    return model


def _as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"fp32": torch.float32, "float32": torch.float32, "full": torch.float32,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "autocast": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if value not in names:
        raise ValueError(f"unknown precision {value!r}; use fp32, fp16 or bf16")
    return names[value]
