"""`load_model`: an SD v1 / 2.x (inpainting too) .ckpt / .safetensors -> a ready LatentDiffusion, offline.

Order of the config: the one given; else a `.yaml` of the same name beside the weights (the
habit of the SD web UIs, and how the bundled demo model ships); else inferred from the weights
as A1111 infers it (`infer_family`; v-prediction by A1111's UNet test). A separate VAE file
replaces the checkpoint's first stage (`vae=`).
"""

from __future__ import annotations

import logging
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
from .fast import enable_fast
from .kernels import set_attention_kernel
from .models.latent_diffusion import LatentDiffusion

# Package data (setup.cfg), so a wheel install finds them; configs/*.yaml link to them.
V1_CONFIG = "data/configs/v1-inference.yaml"
FAMILY_CONFIGS = {"sd1": V1_CONFIG, "sd1-inpainting": "data/configs/v1-inpainting-inference.yaml",
                  "sd2": "data/configs/v2-inference.yaml", "sd2-v": "data/configs/v2-inference-v.yaml",
                  "sd2-inpainting": "data/configs/v2-inference.yaml"}
FAMILY_NAMES = {"sd1": "SD v1 (CLIP ViT-L text encoder, context 768)",
                "sd1-inpainting": "SD v1 inpainting (9-channel UNet, CLIP ViT-L, context 768)",
                "sd2": "SD 2.x (OpenCLIP ViT-H text encoder, context 1024)",
                "sd2-v": "SD 2.x (OpenCLIP ViT-H text encoder, context 1024)",
                "sd2-inpainting": "SD 2.x inpainting (9-channel UNet, OpenCLIP ViT-H, context 1024)"}
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CROSS_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
OPENCLIP_QKV = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
V_PRED_KEY = "v_pred"  # an empty marker tensor some tools (ComfyUI, Forge) save in v-prediction files
log = logging.getLogger(__name__)


def _package_config(name: str) -> Any:
    return OmegaConf.create(resources.files("pww_ldm").joinpath(name).read_text(encoding="utf-8"))


def default_v1_config() -> Any:
    """The SD v1 inference config, CompVis's configs/v1-inference.yaml, read from the package."""
    return _package_config(V1_CONFIG)


def family_config(family: str) -> Any:
    """The bundled config of a family (see FAMILY_CONFIGS). SD 2.x inpainting is v2-inference.yaml
    with Stability's v2-inpainting changes: LatentInpaintDiffusion, hybrid, 9 input channels."""
    cfg = _package_config(FAMILY_CONFIGS[family])
    if family == "sd2-inpainting":
        cfg.model.target = "pww_ldm.models.latent_diffusion.LatentInpaintDiffusion"
        cfg.model.params.conditioning_key = "hybrid"
        cfg.model.params.unet_config.params.in_channels = 9
    return cfg


def _refuse_other_files(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """A clear error for every file that is not an SD v1 / 2.x checkpoint, naming what it is."""
    if any(k.startswith("conditioner.") for k in state_dict):
        raise ArchitectureMismatchError(f"{path}: this is an SDXL checkpoint; SD v1 and SD 2.x "
                                        "(including their inpainting models) are supported")
    if any(k.startswith(("control_model.", "input_hint_block.")) or ".input_hint_block." in k
           for k in state_dict):
        raise ArchitectureMismatchError(f"{path}: this is a ControlNet, not a Stable Diffusion "
                                        "checkpoint; ControlNet is not supported")
    if any(k.startswith("depth_model.") for k in state_dict):
        raise ArchitectureMismatchError(f"{path}: an SD 2 depth-to-image checkpoint; not supported")
    if UNET_IN not in state_dict:
        hint = ""
        if any(k.startswith(("encoder.", "decoder.")) for k in state_dict):
            hint = " It looks like a standalone VAE: pass it as vae= (--vae)."
        elif any("lora" in k.lower() for k in state_dict):
            hint = " It looks like a LoRA."
        raise NotACheckpointError(
            f"{path}: no Stable Diffusion UNet in this file (no key {UNET_IN}).{hint} "
            "Pass a full SD v1 or SD 2.x checkpoint (.ckpt or .safetensors).")


def infer_family(state_dict: dict[str, torch.Tensor], path: str | os.PathLike = "") -> str:
    """The family of a checkpoint from its weights (A1111's cues): sd1, sd1-inpainting, sd2 or
    sd2-inpainting (whether sd2 is v-prediction needs the UNet: see `looks_like_v_prediction`).

    OpenCLIP text keys mean SD 2.x; the UNet's first conv's input channels say inpainting (9);
    anything else raises ArchitectureMismatchError / NotACheckpointError naming what it is.
    """
    _refuse_other_files(state_dict, path)
    in_channels = state_dict[UNET_IN].shape[1]
    if in_channels not in (4, 9):
        kind = {8: "an instruct-pix2pix"}.get(in_channels, "a non-standard")
        raise ArchitectureMismatchError(
            f"{path}: {kind} UNet ({UNET_IN} has {in_channels} input channels; SD has 4, "
            "inpainting models 9); not supported")
    width = state_dict[CROSS_K].shape[1] if CROSS_K in state_dict else None
    openclip = OPENCLIP_QKV in state_dict
    if (openclip and width not in (None, 1024)) or (not openclip and width not in (None, 768)):
        encoder = "OpenCLIP" if openclip else "CLIP"
        raise ArchitectureMismatchError(
            f"{path}: a {encoder} text encoder with UNet context width {width} ({CROSS_K}); SD v1 "
            "has CLIP and 768, SD 2.x OpenCLIP and 1024: not a supported family")
    family = "sd2" if openclip else "sd1"
    return family + ("-inpainting" if in_channels == 9 else "")


def infer_config(state_dict: dict[str, torch.Tensor], path: str | os.PathLike = "") -> Any:
    """The bundled config of the checkpoint's family (`infer_family`); SD 2.x as eps."""
    return family_config(infer_family(state_dict, path))


@torch.no_grad()
def looks_like_v_prediction(model: LatentDiffusion) -> bool:
    """A1111's test for SD 2.x files without a config (`is_using_v_parameterization_for_sd2`).

    The UNet sees a flat latent x = 0.5 (1, 4, 8, 8) at t = 999 with a flat context 0.5
    (1, 2, C): an eps model returns about the noise it sees, so mean(out - x) is near 0; a
    v model at t = 999 predicts v = alpha eps - sigma x_0 ~ -x_0, far below it: v when
    mean(out - x) < -1. A heuristic for the released SD 2.x weights and models tuned from them.
    """
    unet = model.model.diffusion_model
    weight = unet.time_embed[0].weight
    x = torch.full((1, 4, 8, 8), 0.5, device=weight.device, dtype=weight.dtype)
    context = torch.full((1, 2, model.cond_stage_model.token_embedding.weight.shape[1]), 0.5,
                         device=weight.device, dtype=weight.dtype)
    out = unet(x, torch.tensor([999.0], device=weight.device), context=context)
    return (out.float() - x.float()).mean().item() < -1


def _find_config(path: Path, config: Any, state_dict: dict[str, torch.Tensor]) -> tuple[Any, str | None]:
    """(config, family): the family is None when a config was given or found beside the file."""
    if config is not None:
        return (OmegaConf.load(config) if isinstance(config, (str, os.PathLike)) else config), None
    beside = path.with_suffix(".yaml")
    if beside.is_file():
        return OmegaConf.load(beside), None
    family = infer_family(state_dict, path)
    return family_config(family), family


def _check_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path | str) -> None:
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
        + "\nPass the config the checkpoint was trained with (--config), or an SD v1 / SD 2.x "
        "checkpoint (and a VAE of the same layout).")


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
               channels_last: bool = False, compile: bool = False, vae: str | os.PathLike | None = None,
               parameterization: str | None = None, fast: bool = False) -> LatentDiffusion:
    """Load an SD v1 / SD 2.x checkpoint (eps, v, inpainting) into a LatentDiffusion in eval mode.

    path: .ckpt or .safetensors (Lightning checkpoints too). config: a path, an OmegaConf/dict
    config, or None (see module doc). dtype: of the UNet and text encoder; default float32 on
    CPU, float16 on CUDA. vae_dtype: default float32 everywhere (fp16 SD VAEs can decode to NaN).
    attention: kernel name (auto, sdpa, xformers, math). The schedule stays float32.
    compile: torch.compile the UNet in place (keys unchanged; the first call is slow).
    vae: a VAE file (.vae.pt, .vae.safetensors, or a whole-model .ckpt whose first_stage_model
    is taken) replacing the checkpoint's. parameterization: "eps" or "v", overriding the
    config's and the inference (an inferred SD 2.x is v when the file has a `v_pred` key or
    `looks_like_v_prediction` says so). fast: `pww_ldm.fast.enable_fast` (the UNet compiled with
    inductor weight freezing; minutes of compiling at the first call of each image size).
    The model's `checkpoint_path` is the file's absolute path and `vae_path` the VAE's (or None)
    (infotext.model_settings names them in PNG metadata); `family` says what was inferred.
    """
    if parameterization not in (None, "eps", "v"):
        raise ValueError(f"parameterization {parameterization!r}: use 'eps' or 'v' (--v-pred)")
    path = Path(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = _as_dtype(dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    vae_dtype = _as_dtype(vae_dtype) or torch.float32
    state_dict = normalize_keys(read_state_dict(path), use_ema=use_ema)
    v_marker = state_dict.pop(V_PRED_KEY, None) is not None
    if vae is not None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("first_stage_model.")}
        state_dict.update({"first_stage_model." + k: v for k, v in read_vae(vae).items()})
    cfg, family = _find_config(path, config, state_dict)
    model = _build(cfg, state_dict, path if vae is None else f"{path} with the VAE {vae}")
    _place(model, device, dtype, vae_dtype, channels_last, attention, compile)
    if parameterization is None and family == "sd2":
        parameterization = "v" if v_marker or looks_like_v_prediction(model) else "eps"
    if parameterization is not None:
        model.parameterization = parameterization
    if family == "sd2" and model.parameterization == "v":
        family = "sd2-v"
    model.family = family
    if family is not None:
        log.info("%s: %s, %s-prediction", path.name, FAMILY_NAMES[family], model.parameterization)
    # Absolute, links not followed: the name is the one the user chose (a hub cache links it to a
    # hash-named blob); infotext.short_hash follows the link to hash the content.
    model.checkpoint_path = Path(os.path.abspath(path))
    model.vae_path = None if vae is None else Path(os.path.abspath(vae))
    # last: looks_like_v_prediction runs the UNet, which must not compile for its probe input
    return enable_fast(model) if fast else model


def _build(cfg: Any, state_dict: dict[str, torch.Tensor], path: Path | str) -> LatentDiffusion:
    """The config's model with the state_dict's weights, strictly, on the CPU."""
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
    return model


def _place(model: LatentDiffusion, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype,
           channels_last: bool, attention: str, compile: bool) -> None:
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


def read_vae(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A VAE file's first-stage weights, keys without `first_stage_model.` (as A1111 reads them).

    .vae.pt / .vae.safetensors (plain `encoder.*`, `decoder.*`, `quant_conv.*`,
    `post_quant_conv.*`; Lightning-wrapped too), or a whole SD checkpoint whose
    `first_stage_model.*` is taken. Training leftovers (`loss.*`, `model_ema.*`) are dropped.
    A diffusers-format VAE (`encoder.down_blocks.*`) is refused, naming the layout.
    """
    raw = read_state_dict(path)
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in raw):
        raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    vae = {k: v for k, v in raw.items() if not k.startswith(("loss.", "model_ema."))}
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in vae):
        raise ArchitectureMismatchError(
            f"{path}: a diffusers-format VAE (encoder.down_blocks.*); pass the original-layout file "
            "(e.g. vae-ft-mse-840000-ema-pruned.safetensors, keys encoder.down.*)")
    if not any(k.startswith(("encoder.", "decoder.")) for k in vae):
        raise NotACheckpointError(f"{path}: no VAE weights (no encoder.* / decoder.* or "
                                  "first_stage_model.* keys); pass a .vae.pt / .vae.safetensors file")
    return vae


def _as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"fp32": torch.float32, "float32": torch.float32, "full": torch.float32,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "autocast": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if value not in names:
        raise ValueError(f"unknown precision {value!r}; use fp32, fp16 or bf16")
    return names[value]
