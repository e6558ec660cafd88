"""Tiny SD 2.x and inpainting models (random weights) built from the bundled family configs."""

from __future__ import annotations

from tiny import randomize_

from pww_ldm.config import instantiate_from_config
from pww_ldm.loading import family_config

TINY_OPENCLIP = dict(width=32, heads=2, layers=3, embed_dim=32)


def tiny_family_config(family: str):
    """The bundled config of `family` (sd1-inpainting, sd2, sd2-v, sd2-inpainting) at toy width:
    UNet 32/64 channels with 16-channel heads (2 and 4 heads, as num_head_channels 64 gives SD 2.x
    5..20), VAE 32/64, text width 32 (OpenCLIP: 3 blocks)."""
    cfg = family_config(family)
    params = cfg.model.params
    unet = params.unet_config.params
    unet.model_channels, unet.channel_mult, unet.attention_resolutions = 32, [1, 2], [1, 2]
    unet.num_res_blocks, unet.context_dim = 1, 32
    if "num_head_channels" in unet:
        unet.num_head_channels = 16
    else:
        unet.num_heads = 2
    dd = params.first_stage_config.params.ddconfig
    dd.ch, dd.ch_mult, dd.num_res_blocks = 32, [1, 1, 2, 2], 1
    if family.startswith("sd2"):
        params.cond_stage_config.params.config = dict(TINY_OPENCLIP)
    else:
        params.cond_stage_config.params = {"config": dict(hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=2,
                                                          projection_dim=32)}
    return cfg


def tiny_family_model(family: str, seed: int = 0):
    """A tiny model of `family` with random (non-zero) weights, float32, eval mode."""
    return randomize_(instantiate_from_config(tiny_family_config(family).model), seed)
