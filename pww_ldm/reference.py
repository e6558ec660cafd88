"""The reference implementation's Python API (cloneofsimo/paint-with-words-sd), drop-in.

Code written for the reference runs with only its import line changed:

    from pww_ldm.reference import paint_with_words, pww_load_tools

Same names, parameters and defaults; `paint_with_words` returns one PIL image (with our
`info["parameters"]`). What differs, because this engine reads one checkpoint file and never
downloads: `local_model_path` is an SD v1 `.ckpt`/`.safetensors` file (not a diffusers folder),
with neither it nor `hf_model_path` given the bundled demo model is used, and a hub id is refused
with a message saying what to pass. Schedulers are given by their diffusers class (or its name;
diffusers is never imported) and mapped to our samplers (`SCHEDULERS`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .checkpoint import CheckpointError, CheckpointNotFoundError, NotACheckpointError
from .images import check_size
from .loading import load_model
from .models.latent_diffusion import LatentDiffusion
from .models.tokenizer import get_tokenizer
from .paths import DEMO_CKPT
from .pipeline import paint_with_words as _paint_with_words
from .pipeline import resolve_size
from .region import RegionContext
from .samplers.errors import UnknownSamplerError
from .samplers.options import SamplingOptions
from .samplers.registry import get_sampler, sampler_names

# diffusers scheduler class -> (our sampler, eta or None for its default). Each is the sampler that
# integrates the same ODE/SDE with diffusers' default settings of that class:
# DPMSolverMultistep defaults to DPM-Solver++ order 2 (= DPM++ 2M); DPMSolverSinglestep to
# DPM-Solver++ 2S without noise (= DPM++ 2S a with eta 0); PNDM's pseudo-linear multistep is
# CompVis's PLMS (which warms up with its own 2nd-order steps instead of PNDM's Runge-Kutta ones).
SCHEDULERS: dict[str, tuple[str, float | None]] = {
    "LMSDiscreteScheduler": ("lms", None),
    "EulerDiscreteScheduler": ("euler", None),
    "EulerAncestralDiscreteScheduler": ("euler_a", None),
    "HeunDiscreteScheduler": ("heun", None),
    "KDPM2DiscreteScheduler": ("dpm_2", None),
    "KDPM2AncestralDiscreteScheduler": ("dpm_2_a", None),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", None),
    "DPMSolverSinglestepScheduler": ("dpmpp_2s_a", 0.0),
    "DPMSolverSDEScheduler": ("dpmpp_sde", None),
    "DDIMScheduler": ("ddim", None),
    "PNDMScheduler": ("plms", None),
}
_BY_LOWER = {name.lower(): name for name in SCHEDULERS}

# The reference's default, `lambda w, sigma, qk: 0.1 * w * math.log(sigma + 1) * qk.max()`, is
# the built-in "max" (same formula, same 0.1), which runs batched instead of per sample.
REFERENCE_WEIGHT_FUNCTION = "max"


class UnknownSchedulerError(UnknownSamplerError):
    """A scheduler that maps to none of our samplers; the message lists the known ones."""


class HubModelError(CheckpointError):
    """A Hugging Face hub id (or diffusers folder) where a local checkpoint file is needed."""


@dataclass(frozen=True)
class PwwTools:
    """What `pww_load_tools` returns and `paint_with_words(preloaded_utils=...)` takes.

    model: the loaded LatentDiffusion. sampler: our sampler name; eta: the sampler's eta, None for
    its default; scheduler: the diffusers class name it came from (or the name given).
    """

    model: LatentDiffusion
    sampler: str
    eta: float | None = None
    scheduler: str = "LMSDiscreteScheduler"

    def with_scheduler(self, scheduler_type: Any) -> PwwTools:
        """The same loaded model with another scheduler (no reload)."""
        name, sampler, eta = resolve_scheduler(scheduler_type)
        return replace(self, sampler=sampler, eta=eta, scheduler=name)


def resolve_scheduler(scheduler_type: Any) -> tuple[str, str, float | None]:
    """(name, our sampler name, eta or None for the sampler's default) for a scheduler.

    scheduler_type: a diffusers scheduler class or instance (only its class name is read), its
    name as a string (case-insensitive), or one of our own sampler names ("DPM++ 2M Karras").
    Raises UnknownSchedulerError listing the known names.
    """
    if isinstance(scheduler_type, str):
        name = scheduler_type.strip()
    elif isinstance(scheduler_type, type):
        name = scheduler_type.__name__
    else:
        name = type(scheduler_type).__name__
    known = _BY_LOWER.get(name.lower())
    if known is not None:
        return (known, *SCHEDULERS[known])
    try:
        return name, get_sampler(name).name, None
    except UnknownSamplerError:
        raise UnknownSchedulerError(
            f"unknown scheduler {scheduler_type!r}: pww_ldm maps these diffusers schedulers "
            f"(class or name): {', '.join(SCHEDULERS)}; or give one of our samplers by name: "
            f"{', '.join(sampler_names('a1111'))}") from None


def resolve_model_path(local_model_path: str | Path | None, hf_model_path: str | None) -> Path:
    """The checkpoint file to load: local_model_path, else the bundled demo model.

    As in the reference, a local path wins over hf_model_path; hf_model_path alone (a hub id or a
    diffusers folder) raises HubModelError, a folder as local_model_path NotACheckpointError.
    """
    if local_model_path is not None:
        path = Path(local_model_path)
        if path.is_dir():
            raise NotACheckpointError(
                f"local_model_path {str(path)!r} is a folder (a diffusers-format model?): pww_ldm "
                "loads one SD v1 checkpoint file. Pass the .ckpt/.safetensors file itself (the "
                "original that change_model_path.py converted), not the converted folder.")
        return path
    if hf_model_path is not None:
        raise HubModelError(
            f"hf_model_path={hf_model_path!r}: pww_ldm never downloads models and does not read "
            "diffusers folders. Pass local_model_path='path/to/model.safetensors' (an SD v1 "
            ".ckpt/.safetensors file, e.g. v1-5-pruned-emaonly.safetensors), or give neither for "
            "the bundled demo model.")
    if not DEMO_CKPT.is_file():
        raise CheckpointNotFoundError(
            f"no model given and the bundled demo model is not at {DEMO_CKPT}: pass "
            "local_model_path='path/to/model.safetensors' (an SD v1 .ckpt/.safetensors file)")
    return DEMO_CKPT


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for the reference's `device` string.

    The reference's examples say "cuda:0"; where CUDA (or MPS) is not available this warns and
    runs on the CPU, so the examples run unchanged. None means CUDA if available, else CPU.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"bad device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps' ({error})"
                         ) from None
    mps = getattr(torch.backends, "mps", None)
    available = {"cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available()}
    if not available.get(dev.type, True):
        warnings.warn(f"device {str(device)!r} asked for but {dev.type} is not available: running "
                      "on the CPU", RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    return dev


def pww_load_tools(device: str | torch.device | None = "cuda:0",
                   scheduler_type: Any = "LMSDiscreteScheduler",
                   local_model_path: str | Path | None = None, hf_model_path: str | None = None,
                   model_token: str | None = None) -> PwwTools:
    """Load a model once for several `paint_with_words(preloaded_utils=...)` calls.

    Parameters as the reference's. local_model_path: an SD v1 .ckpt/.safetensors file (default:
    the bundled demo model). model_token (a hub token) is accepted and unused: nothing is
    downloaded. The scheduler and path are checked before the checkpoint is read.
    """
    del model_token  # only authenticates hub downloads, which never happen here
    name, sampler, eta = resolve_scheduler(scheduler_type)
    path = resolve_model_path(local_model_path, hf_model_path)
    model = load_model(path, device=resolve_device(device))
    return PwwTools(model, sampler, eta, name)


def _check_inputs(prompt: str, color_map_image: Image.Image | None, color_context: Any,
                  init_image: Image.Image | None, weight_function: str | Callable) -> None:
    """What needs no model, checked before the checkpoint loads: size, colour context, labels
    against the prompt's tokens (the bundled CLIP tokenizer), weight function."""
    width, height = resolve_size(None, None, color_map_image or init_image)
    check_size(width, height)
    with warnings.catch_warnings():  # a colour missing from the map warns once, from the run
        warnings.simplefilter("ignore")
        RegionContext.build(prompt, color_map_image, color_context, width=width, height=height,
                            tokenizer=get_tokenizer(), weight_function=weight_function,
                            resample="bilinear", strict=False)


def paint_with_words(color_context: Mapping[Any, str] | None = None,
                     color_map_image: Image.Image | None = None, input_prompt: str = "",
                     num_inference_steps: int = 30, guidance_scale: float = 7.5, seed: int = 0,
                     scheduler_type: Any = "LMSDiscreteScheduler",
                     device: str | torch.device | None = "cuda:0",
                     weight_function: str | Callable = REFERENCE_WEIGHT_FUNCTION,
                     local_model_path: str | Path | None = None, hf_model_path: str | None = None,
                     preloaded_utils: PwwTools | None = None, unconditional_input_prompt: str = "",
                     model_token: str | None = None, init_image: Image.Image | None = None,
                     strength: float = 0.5) -> Image.Image:
    """The reference's `paint_with_words`: one image painted from a colour map, as a PIL image.

    color_context: {(r, g, b) or "#rrggbb": "label,weight[,seed[,blur]]"}; the map's size (rounded
    down to a multiple of 8) is the image's. weight_function: f(w (N, 77), sigma (0-d tensor; a
    float for math.log), qk (heads, N, 77)) -> bias, or a built-in name ("max", "std",
    "log2_std"). unconditional_input_prompt is the negative prompt. init_image/strength: the
    reference's img2img. Without preloaded_utils the model is loaded as `pww_load_tools(device,
    scheduler_type, local_model_path, hf_model_path)` does; with it, scheduler_type and device
    are ignored, as in the reference. Masks are resampled bilinearly, as the reference does; a
    colour missing from the map warns (the reference's behaviour) instead of raising.
    """
    if preloaded_utils is None:
        _, sampler, eta = resolve_scheduler(scheduler_type)
    elif isinstance(preloaded_utils, PwwTools):
        sampler, eta = preloaded_utils.sampler, preloaded_utils.eta
    else:
        raise TypeError(
            f"preloaded_utils is a {type(preloaded_utils).__name__}: pass what "
            "pww_ldm.reference.pww_load_tools returns (the reference's tuple of diffusers modules "
            "cannot drive this engine)")
    # Every check that needs no model comes before the (slow) checkpoint load.
    options = SamplingOptions(sampler=sampler, steps=num_inference_steps,
                              guidance_scale=guidance_scale, eta=eta,
                              strength=strength if init_image is not None else None)
    if preloaded_utils is None:
        _check_inputs(input_prompt, color_map_image, color_context, init_image, weight_function)
        preloaded_utils = pww_load_tools(device, scheduler_type, local_model_path, hf_model_path,
                                         model_token)
    images = _paint_with_words(
        preloaded_utils.model, input_prompt, color_map_image, color_context, options=options,
        seed=seed, weight_function=weight_function, negative_prompt=unconditional_input_prompt,
        init_image=init_image, resample="bilinear", strict=False)
    return images[0]
