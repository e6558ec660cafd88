"""CompVis config semantics: `{target: dotted.path.Class, params: {...}}` -> an instance.

Original CompVis/Stability configs name `ldm.*` classes; those names are mapped onto ours so
a user's own `v1-inference.yaml` (or a fine-tune's `model.yaml`) works unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

# CompVis class paths -> the pww_ldm class that accepts the same parameters.
LDM_ALIASES = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "pww_ldm.models.latent_diffusion.LatentDiffusion",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "pww_ldm.models.unet.UNetModel",
    "ldm.models.autoencoder.AutoencoderKL": "pww_ldm.models.autoencoder.AutoencoderKL",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder":
        "pww_ldm.models.text_encoder.FrozenCLIPEmbedder",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder":
        "pww_ldm.models.open_clip.FrozenOpenCLIPEmbedder",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion":
        "pww_ldm.models.latent_diffusion.LatentInpaintDiffusion",
}


class ConfigError(ValueError):
    """A model config that cannot be instantiated."""


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    """Import `package.module.Name` and return Name (CompVis's helper)."""
    string = LDM_ALIASES.get(string, string)
    module, _, name = string.rpartition(".")
    if not module:
        raise ConfigError(f"target {string!r} is not a dotted path like package.module.Class")
    try:
        mod = importlib.import_module(module)
        if reload:
            mod = importlib.reload(mod)
        return getattr(mod, name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config target {string!r} cannot be imported: {exc}") from exc


def instantiate_from_config(config: Mapping[str, Any] | str) -> Any:
    """Build `target(**params)`; '__is_first_stage__' / '__is_unconditional__' give None."""
    if isinstance(config, str) or "target" not in config:
        if config in ("__is_first_stage__", "__is_unconditional__"):
            return None
        raise ConfigError("Expected key `target` to instantiate.")
    params = config.get("params", None) or {}
    return get_obj_from_str(config["target"])(**dict(params))
