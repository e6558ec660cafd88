"""Tiny model configs and checkpoint writers shared by the tests (random weights, no download)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pww_ldm.config import instantiate_from_config
from pww_ldm.loading import default_v1_config

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, projection_dim=32)


def tiny_config(context_dim: int = 32):
    """A v1-structured config at toy width: UNet 32/64 channels, VAE 32/64, CLIP width 32."""
    cfg = copy.deepcopy(default_v1_config())
    unet = cfg.model.params.unet_config.params
    unet.model_channels = 32
    unet.channel_mult = [1, 2]
    unet.attention_resolutions = [1, 2]
    unet.num_res_blocks = 1
    unet.num_heads = 2
    unet.context_dim = context_dim
    dd = cfg.model.params.first_stage_config.params.ddconfig
    dd.ch = 32
    dd.ch_mult = [1, 1, 2, 2]  # four levels: the VAE factor is 8 as in SD
    dd.num_res_blocks = 1
    cfg.model.params.cond_stage_config.params = {"config": dict(TINY_CLIP, hidden_size=context_dim)}
    return cfg


def tiny_model(seed: int = 0, context_dim: int = 32):
    """A tiny LatentDiffusion with random (non-zero) weights, float32, eval mode."""
    torch.manual_seed(seed)
    return randomize_(instantiate_from_config(tiny_config(context_dim).model), seed)


def randomize_(model, seed: int = 0):
    """Random values in every parameter, including the zero-initialised output convs.

    Norm layers get weights near 1 so activations keep a sensible scale through the network.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            for name, p in module.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    p.normal_(1.0, 0.1)
                else:
                    p.normal_(0, 0.02 if p.dim() > 1 else 0.01)
    return model.eval()


def write_checkpoint(model, path: Path, *, lightning: bool = True, ema: bool = True,
                     dtype: torch.dtype | None = None, ema_offset: float = 1.0) -> Path:
    """Write `model` the way real SD checkpoints are: Lightning dict, EMA copy, position_ids.

    EMA weights are the model's plus `ema_offset`, so a test can tell which set was loaded.
    """
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
          for k, v in model.state_dict().items()}
    n = sd["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape[0]
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n)[None]
    if ema:
        for k, v in list(sd.items()):
            if k.startswith("model.diffusion_model."):
                ema_key = "model_ema." + k[len("model."):].replace(".", "")
                sd[ema_key] = v + ema_offset if ema_offset else v.clone()
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif lightning:
        from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint
        torch.save({"epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2",
                    "state_dict": sd,
                    "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": None,
                                                    "dirpath": "/fsx/logs/checkpoints"}}}, path)
    else:
        torch.save(sd, path)
    return path


def save_config(cfg, path: Path) -> Path:
    """Write an OmegaConf config to YAML."""
    OmegaConf.save(cfg, path)
    return path


def painted_map(width: int, height: int, *boxes: tuple[tuple[int, int, int], slice, slice]):
    """A black width x height colour map with each (rgb, rows, cols) box painted in its colour."""
    import numpy as np
    from PIL import Image

    arr = np.zeros((height, width, 3), np.uint8)
    for rgb, rows, cols in boxes:
        arr[rows, cols] = rgb
    return Image.fromarray(arr)
