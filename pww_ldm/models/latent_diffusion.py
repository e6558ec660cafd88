"""LatentDiffusion for inference: the CompVis module tree and schedule, no training code.

`model.diffusion_model` (UNet), `first_stage_model` (VAE), `cond_stage_model` (CLIP) and the
DDPM schedule buffers under the names CompVis registers, so an SD checkpoint's state_dict loads
strictly. A plain nn.Module: Lightning lives at the edges (pww_ldm.train, pww_ldm.batch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..conditioning import UNetContext
from ..config import instantiate_from_config
from .autoencoder import AutoencoderKL

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4,
                       linear_end: float = 2e-2) -> np.ndarray:
    """CompVis's betas: "linear" is linear in sqrt(beta) (the SD schedule). (n_timestep,)."""
    if schedule == "linear":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep,
                           dtype=np.float64) ** 2
    if schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    raise ValueError(f"beta_schedule {schedule!r} is not supported; use 'linear'")


def schedule_tensors(beta_schedule: str, timesteps: int, linear_start: float,
                     linear_end: float, v_posterior: float = 0.0) -> dict[str, torch.Tensor]:
    """The DDPM schedule, computed in float64 and stored float32 as CompVis does: {name: (T,)}."""
    betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = (1 - v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) \
        + v_posterior * betas
    values = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {name: torch.tensor(values[name], dtype=torch.float32, device="cpu")
            for name in SCHEDULE_BUFFERS}


class DiffusionWrapper(nn.Module):
    """Holds the UNet as `diffusion_model` (the `model.diffusion_model.*` key prefix).

    conditioning_key "crossattn": text through cross-attention only; "hybrid" (inpainting
    models): also `c_concat` channels concatenated after the latent, as CompVis's wrapper does.
    """

    def __init__(self, diff_model_config: dict, conditioning_key: str | None = "crossattn") -> None:
        super().__init__()
        if conditioning_key not in ("crossattn", "hybrid", None):
            raise ValueError(f"conditioning_key {conditioning_key!r} is not supported "
                             "(use crossattn, or hybrid for inpainting models)")
        self.conditioning_key = conditioning_key
        self.diffusion_model = instantiate_from_config(diff_model_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | UNetContext | None,
                c_concat: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, h, w), t (B,), context (B, 77, C_ctx) or UNetContext, c_concat (B, C', h, w)
        for a hybrid model -> the UNet's output (B, C, h, w)."""
        if (c_concat is None) != (self.conditioning_key != "hybrid"):
            raise ValueError("an inpainting (hybrid) model needs c_concat (mask + masked-image "
                             "latent) and other models take none: use pww_ldm.inpaint for it"
                             if c_concat is None else "c_concat given to a non-inpainting model")
        if c_concat is not None:
            x = torch.cat([x, c_concat.to(x)], dim=1)
        return self.diffusion_model(x, t, context=context)


class LatentDiffusion(nn.Module):
    """Stable Diffusion: text -> context, latent denoiser, latent <-> image.

    Accepts CompVis's constructor parameters (configs/v1-inference.yaml); training-only ones
    (monitor, scheduler_config, ...) are accepted and ignored.
    """

    def __init__(self, first_stage_config: dict, cond_stage_config: dict, unet_config: dict,
                 timesteps: int = 1000, beta_schedule: str = "linear",
                 linear_start: float = 1e-4, linear_end: float = 2e-2,
                 scale_factor: float = 1.0, scale_by_std: bool = False,
                 conditioning_key: str | None = "crossattn", parameterization: str = "eps",
                 cond_stage_trainable: bool = False, v_posterior: float = 0.0,
                 image_size: int = 64, channels: int = 4, **compvis_training_params: Any) -> None:
        super().__init__()
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization {parameterization!r} is not supported: eps (SD v1, "
                             "SD 2.x 512-base) or v (SD 2.x 768-v)")
        self.parameterization = parameterization
        self.image_size = image_size
        self.channels = channels
        self.cond_stage_trainable = cond_stage_trainable
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.first_stage_model: AutoencoderKL = instantiate_from_config(first_stage_config)
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        if scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        else:
            self.scale_factor = scale_factor
        self.register_schedule(beta_schedule, timesteps, linear_start, linear_end, v_posterior)

    def register_schedule(self, beta_schedule: str, timesteps: int, linear_start: float,
                          linear_end: float, v_posterior: float = 0.0) -> None:
        """Register the DDPM schedule buffers (see `schedule_tensors`)."""
        self.num_timesteps = int(timesteps)
        tensors = schedule_tensors(beta_schedule, timesteps, linear_start, linear_end, v_posterior)
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, tensors[name])

    @property
    def unet_dtype(self) -> torch.dtype:
        """The dtype the UNet computes in."""
        return self.model.diffusion_model.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        """The device of the UNet's weights."""
        return self.model.diffusion_model.time_embed[0].weight.device

    def attention_grids(self, latent_h: int, latent_w: int) -> list[tuple[int, int]]:
        """The (h, w) grids the UNet's attention layers see for a latent_h x latent_w latent."""
        return self.model.diffusion_model.attention_grids(latent_h, latent_w)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_start (B, C, h, w) noised to DDPM timesteps t (B,) with `noise` (B, C, h, w):
        sqrt(alpha_bar_t) x_start + sqrt(1 - alpha_bar_t) noise, in x_start's dtype."""
        a = self.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1).to(x_start.dtype)
        s = self.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1).to(x_start.dtype)
        return a * x_start + s * noise

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | UNetContext,
                    c_concat: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's prediction (eps, or v when `parameterization` is "v"): x_noisy (B, 4, h, w),
        t (B,), cond (B, 77*k, C) or UNetContext; c_concat (B, 5, h, w) for inpainting models."""
        return self.model(x_noisy, t, cond, c_concat)

    @property
    def clip_skip(self) -> int:
        """A1111's clip skip of the text encoder (1 = last layer, 2 = penultimate + final norm)."""
        return self.cond_stage_model.clip_skip

    @clip_skip.setter
    def clip_skip(self, value: int) -> None:
        self.cond_stage_model.clip_skip = self.cond_stage_model.check_clip_skip(value)

    @torch.no_grad()
    def get_learned_conditioning(self, c: str | list[str], clip_skip: int | None = None
                                 ) -> torch.Tensor:
        """Prompt(s) in A1111 syntax -> (B, 77*k, C) text embeddings, emphasis applied.

        k is the most 75-token chunks of any prompt; clip_skip overrides `self.clip_skip`.
        """
        return self.cond_stage_model.encode(c, clip_skip=clip_skip)

    def encode_first_stage(self, x: torch.Tensor) -> Any:
        """Image (B, 3, H, W) in [-1, 1] -> the VAE posterior over (B, 4, H/8, W/8)."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior: Any,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
        """A posterior sample scaled by scale_factor: the diffusion's latent (B, 4, h, w)."""
        z = posterior.sample(generator) if hasattr(posterior, "sample") else posterior
        return self.scale_factor * z

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latent (B, 4, h, w) -> image (B, 3, 8h, 8w) roughly in [-1, 1]."""
        return self.first_stage_model.decode(z / self.scale_factor)


class LatentInpaintDiffusion(LatentDiffusion):
    """CompVis's inpainting model (SD 1.5 / 2 inpainting): the UNet takes 9 channels, the noisy
    latent then `c_concat` = [mask (1), masked-image latent (4)] at latent size.

    concat_keys, masked_image_key, finetune_keys and the rest of CompVis's training parameters
    are accepted and ignored; conditioning_key is "hybrid".
    """

    def __init__(self, *args: Any, concat_keys: Any = ("mask", "masked_image"),
                 masked_image_key: str = "masked_image", **kwargs: Any) -> None:
        kwargs.setdefault("conditioning_key", "hybrid")
        if kwargs["conditioning_key"] != "hybrid":
            raise ValueError("LatentInpaintDiffusion needs conditioning_key: hybrid")
        super().__init__(*args, **kwargs)

    @torch.no_grad()
    def inpaint_conditioning(self, image: torch.Tensor, mask: torch.Tensor,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """c_concat (B, 5, h, w) of images (B, 3, H, W) in [-1, 1] and masks (B, 1, H, W) in
        {0, 1} (1 = repaint): the mask resized to the latent grid (nearest, as CompVis's
        interpolate) and the latent of `image * (mask < 0.5)` (the masked area grey).

        The masked image's latent is the posterior's mean when generator is None (A1111 and
        diffusers sample it; the mean is the seed-free choice), else a seeded sample.
        """
        masked = image * (mask < 0.5).to(image)
        posterior = self.encode_first_stage(masked.to(self.first_stage_model.post_quant_conv.weight))
        latent = self.scale_factor * (posterior.mode() if generator is None
                                      else posterior.sample(generator)).float()
        small = torch.nn.functional.interpolate((mask >= 0.5).float(), size=latent.shape[-2:])
        return torch.cat([small, latent], dim=1)
