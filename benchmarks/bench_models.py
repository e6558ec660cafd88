"""Models and inputs for benchmarks/bench.py: ours and diffusers' with the same random weights.

Full size = the SD v1 architecture of configs/v1-inference.yaml (860M-parameter UNet), built on
the meta device and filled with random values (no checkpoint needed); --quick = the tiny test
config. The diffusers models get the same weights through diffusers' own LDM conversion.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:  # tiny.py / oracle.py: the test helpers (randomize_, ...)
    sys.path.insert(0, str(ROOT / "tests"))

from tiny import randomize_, tiny_config  # noqa: E402

from pww_ldm.conditioning import UNetContext  # noqa: E402
from pww_ldm.config import instantiate_from_config  # noqa: E402
from pww_ldm.kernels import set_attention_kernel  # noqa: E402
from pww_ldm.loading import default_v1_config  # noqa: E402
from pww_ldm.models.latent_diffusion import LatentDiffusion  # noqa: E402
from pww_ldm.region import PaintWithWords, RegionContext  # noqa: E402

PROMPT = "realistic photo of a dog, cat, tree, with beautiful sky, on sandy ground"
# Five regions of a 512x512 map: sky band on top, tree / dog / cat in the middle, ground below.
REGIONS = {
    (0, 0, 255): ("sky,1.0", (0, 0, 512, 160)),
    (0, 255, 0): ("tree,1.0", (0, 160, 160, 400)),
    (255, 0, 0): ("dog,1.0", (160, 160, 336, 400)),
    (255, 255, 0): ("cat,1.0", (336, 160, 512, 400)),
    (128, 64, 0): ("ground,1.0", (0, 400, 512, 512)),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_config(quick: bool) -> Any:
    """The LatentDiffusion config: the tiny test config for --quick, else SD v1."""
    return tiny_config() if quick else default_v1_config()


def _fill_leftover_buffers(model: torch.nn.Module) -> None:
    # to_empty leaves buffers uninitialised: CLIP's position_ids must be 0..76 again.
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if name == "position_ids":
                buf.copy_(torch.arange(buf.shape[-1]).expand(buf.shape))


def build_ours(quick: bool, device: torch.device, dtype: torch.dtype, seed: int = 0,
               kernel: str = "sdpa") -> tuple[LatentDiffusion, Any]:
    """A LatentDiffusion with random weights; UNet and CLIP in `dtype`, VAE float32.

    Returns (model, config). Built on the meta device then materialised (no init cost).
    """
    cfg = model_config(quick)
    params = cfg.model.params
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    model.to_empty(device="cpu")
    model.register_schedule("linear", params.timesteps, params.linear_start, params.linear_end)
    with torch.no_grad():
        _fill_leftover_buffers(model)
    randomize_(model, seed)
    model.model.to(device=device)
    cast_unet(model.model, dtype)
    model.cond_stage_model.to(device=device, dtype=dtype)
    model.first_stage_model.to(device=device)
    model.to(device)
    set_attention_kernel(model, kernel)
    return model.eval().requires_grad_(False), cfg


def group_norm32_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether pww_ldm's GroupNorm32 runs with `dtype` weights on `device` (a tiny probe)."""
    from pww_ldm.models.unet import GroupNorm32

    try:
        norm = GroupNorm32(32, 32).to(device=device, dtype=dtype)
        norm(torch.zeros(1, 32, 2, 2, device=device, dtype=dtype))
        return True
    except RuntimeError:
        return False


def cast_unet(unet: torch.nn.Module, dtype: torch.dtype) -> str:
    """Cast our UNet to `dtype`; where pww_ldm's GroupNorm32 cannot run in `dtype` on this
    device (its CPU/CUDA "mixed dtype" error before commit 6522f42), keep those norms float32,
    which computes the same normalisation. Returns a note for the results ("" if not needed).
    """
    from pww_ldm.models.unet import GroupNorm32

    unet.to(dtype)
    device = next(unet.parameters()).device
    if dtype == torch.float32 or group_norm32_ok(device, dtype):
        return ""
    for module in unet.modules():
        if isinstance(module, GroupNorm32):
            module.float()
    return "GroupNorm32 kept fp32 (mixed-dtype group_norm error in this pww_ldm)"


def build_unet_only(quick: bool, device: torch.device, dtype: torch.dtype,
                    seed: int = 0) -> torch.nn.Module:
    """Just the UNet (random weights) in `dtype` on `device`: for the allocator workers."""
    cfg = model_config(quick)
    with torch.device("meta"):
        unet = instantiate_from_config(cfg.model.params.unet_config)
    unet.to_empty(device="cpu")
    randomize_(unet, seed)
    cast_unet(unet.to(device), dtype)
    return unet.eval().requires_grad_(False)


def _assign(module_cls: Any, config: dict, converted: dict) -> torch.nn.Module:
    # Instantiate on meta and take the converted tensors as they are (no random init, and no
    # second copy of the weights in RAM while both models are alive).
    with torch.device("meta"):
        module = module_cls(**config)
    module.load_state_dict(converted, strict=True, assign=True)
    leftovers = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
                 if t.is_meta]
    if leftovers:
        raise RuntimeError(f"diffusers model kept meta tensors: {leftovers[:5]}")
    return module.eval().requires_grad_(False)


def build_diffusers(model: LatentDiffusion, cfg: Any, device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(UNet2DConditionModel in `dtype`, AutoencoderKL float32) holding `model`'s weights.

    The conversion is diffusers' own (diffusers.loaders.single_file_utils).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from diffusers.utils import logging as diffusers_logging
    from omegaconf import OmegaConf

    diffusers_logging.set_verbosity_error()  # its "cast with to()" advice is noise here

    original = OmegaConf.to_container(cfg, resolve=True)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()
             if k.startswith(("model.diffusion_model.", "first_stage_model."))}
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, state)
    unet = _assign(UNet2DConditionModel, unet_cfg, sfu.convert_ldm_unet_checkpoint(state, unet_cfg))
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, state)
    vae_sd = {k[len("first_stage_model."):]: v for k, v in state.items()
              if k.startswith("first_stage_model.")}
    vae = _assign(AutoencoderKL, vae_cfg, sfu.convert_ldm_vae_checkpoint(vae_sd, vae_cfg))
    return unet.to(device=device, dtype=dtype), vae.to(device=device)


def color_map(width: int = 512, height: int = 512) -> tuple[Image.Image, dict]:
    """A width x height colour map with the five REGIONS and its colour context."""
    rgb = np.full((512, 512, 3), 255, dtype=np.uint8)
    for color, (_, (x0, y0, x1, y1)) in REGIONS.items():
        rgb[y0:y1, x0:x1] = color
    image = Image.fromarray(rgb).resize((width, height), Image.NEAREST)
    return image, {color: text for color, (text, _) in REGIONS.items()}


def region_context(model: LatentDiffusion, width: int = 512, height: int = 512) -> RegionContext:
    """RegionContext of PROMPT on the five-region map, default weight function ("max")."""
    image, context = color_map(width, height)
    regions = RegionContext.build(PROMPT, image, context, width=width, height=height,
                                  tokenizer=model.cond_stage_model.tokenizer)
    assert regions.is_active and len(regions.regions) == 5
    # as the pipeline does: the weight maps of every attention grid before the first step
    regions.prepare(model.attention_grids(height // 8, width // 8), model.device,
                    torch.promote_types(model.unet_dtype, torch.float32))
    return regions


def unet_inputs(model: LatentDiffusion, latent: int = 64, batch: int = 2, seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """One CFG step's inputs: x (B,4,h,w) = [x; x], t (B,), sigma (B,), emb (B,77,C) = [uncond; cond]."""
    g = torch.Generator().manual_seed(seed)
    dtype, device = model.unet_dtype, model.device
    with torch.inference_mode():
        emb = model.get_learned_conditioning([""] * (batch // 2) + [PROMPT] * (batch - batch // 2))
    # A CFG batch holds the same latent in both halves, as every sampler builds it (our UNet
    # computes the rows' shared start once: pww_ldm.models.shared_rows).
    distinct = batch // 2 if batch % 2 == 0 else batch
    x = torch.randn(distinct, 4, latent, latent, generator=g).repeat(batch // distinct, 1, 1, 1)
    return {"x": x.to(device, dtype),
            "t": torch.full((batch,), 500.0, device=device),
            "sigma": torch.full((batch,), 4.0, device=device),
            "emb": emb.to(device, dtype)}


def ours_step_fn(unet: torch.nn.Module, inputs: dict[str, torch.Tensor],
                 regions: RegionContext | None = None) -> Any:
    """A closure running one UNet call as the sampler does (UNetContext; regions on cond rows)."""
    plugins = (PaintWithWords(regions),) if regions is not None else ()
    context = UNetContext(inputs["emb"], inputs["sigma"], plugins, cond_rows=slice(1, 2))
    return lambda: unet(inputs["x"], inputs["t"], context=context)


def diffusers_step_fn(unet: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """A closure running one diffusers UNet call on the same inputs."""
    return lambda: unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["emb"]).sample


def diffusers_txt2img(unet: torch.nn.Module, vae: torch.nn.Module, text_model: torch.nn.Module,
                      tokenizer: Any, alphas_cumprod: torch.Tensor, prompt: str, steps: int,
                      width: int, height: int, seed: int = 0, guidance_scale: float = 7.5,
                      scale_factor: float = 0.18215) -> np.ndarray:
    """The minimal diffusers loop doing pww_ldm's txt2img work: Euler, same sigmas, CFG batch 2.

    Text encoding (CLIPTextModel), `steps` Euler steps over k-diffusion's sigmas (the same
    DiscreteSchedule as ours), one UNet call per step on [uncond; cond], VAE decode.
    Returns the (H, W, 3) uint8 image.
    """
    from pww_ldm.samplers.schedules import DiscreteSchedule

    device, dtype = unet.device, unet.dtype
    ids = torch.cat([tokenizer([""], max_length=77), tokenizer([prompt], max_length=77)])
    emb = text_model(ids.to(device)).last_hidden_state.to(dtype)
    schedule = DiscreteSchedule(alphas_cumprod.float().cpu()).to(device)
    sigmas = schedule.get_sigmas(steps).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, height // 8, width // 8, generator=g).to(device) * sigmas[0]
    for i in range(steps):
        sigma = sigmas[i]
        t = schedule.sigma_to_t(sigma.reshape(1)).expand(2)
        x_in = (torch.cat([x, x]) / (sigma**2 + 1) ** 0.5).to(dtype)
        eps_u, eps_c = unet(x_in, t, encoder_hidden_states=emb).sample.float().chunk(2)
        denoised = x - sigma * (eps_u + guidance_scale * (eps_c - eps_u))
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
    image = vae.decode((x / scale_factor).to(vae.dtype)).sample.float()
    image = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()
