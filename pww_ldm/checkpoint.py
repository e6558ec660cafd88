"""Reading SD checkpoints safely and normalising their keys.

A `.ckpt` is a pickle, and a pickle can run code: it is read with `torch.load(weights_only=True)`
and an allow-list of exactly what real SD checkpoints hold besides tensors. `.safetensors`
cannot carry code. Every failure is one exception type per kind, naming the file and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    """Base of every checkpoint problem."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A .ckpt pickle asked to import something outside the allow-list; nothing was run."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or damaged."""


class NotACheckpointError(CheckpointError):
    """The file is readable but holds no Stable Diffusion weights."""


class ArchitectureMismatchError(CheckpointError):
    """The weights are of another architecture (SD 2.x, inpainting, SDXL, ...)."""


class StateDictMismatchError(CheckpointError):
    """Keys missing, unexpected or wrongly shaped against the config."""


class ModelCheckpoint:
    """Stand-in for pytorch_lightning's ModelCheckpoint class.

    Real SD .ckpt files use that class object as a dict key in `callbacks`. Unpickling maps the
    name to this inert class instead of importing Lightning; it is never instantiated.
    """


_np_core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
_ALLOWED_GLOBALS = [
    (ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (ModelCheckpoint, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    # numpy scalars and dtypes appear in Lightning's callback state (best_model_score etc.)
    (np.dtype, "numpy.dtype"),
    (_np_core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (_np_core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np.dtypes.Float64DType, "numpy.dtypes.Float64DType"),
    (np.dtypes.Float32DType, "numpy.dtypes.Float32DType"),
    (np.dtypes.Int64DType, "numpy.dtypes.Int64DType"),
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def load_file_safely(path: str | os.PathLike, extra_globals: tuple = ()) -> object:
    """The raw content of a `.safetensors` file or of a PyTorch pickle (`.ckpt`, `.pt`, `.bin`),
    on the CPU, for other file kinds (embeddings, LoRA) to interpret.

    Pickles are read with `weights_only=True` and the allow-list, plus `extra_globals` (inert
    container classes a file kind needs). Raises CheckpointNotFoundError for a missing file,
    UnsafeCheckpointError for a pickle that asks to import anything else (nothing is run),
    CorruptCheckpointError for a damaged file; each names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path)
    return _load_pickle(path, extra_globals)


def _load_pickle(path: Path, extra_globals: tuple = ()) -> dict:
    try:
        with torch.serialization.safe_globals([*_ALLOWED_GLOBALS, *extra_globals]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "weights_only" in message.lower() or "global" in message.lower():
            found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", message)
            refused = (found.group(1) or found.group(2)) if found else "a non-tensor object"
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle {refused}; this .ckpt asks to import or run code "
                "that Stable Diffusion checkpoints never contain. Nothing was executed. Use a "
                ".safetensors file or a checkpoint from a source you trust.") from None
        raise CorruptCheckpointError(f"{path}: damaged pickle ({exc}); download it again") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of a damaged pickle is the same to users
        raise CorruptCheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc)[:200]}); the file is truncated or corrupt, download it again") from exc


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"{path}: cannot be read as safetensors ({exc}); the file is truncated or "
            "corrupt, download it again") from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the raw state_dict of a .ckpt / .safetensors file (Lightning `state_dict` unwrapped).

    Returns {key: tensor} on the CPU, keys as stored.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path}: no such checkpoint file. Put SD v1 weights at "
            "models/ldm/stable-diffusion-v1/model.ckpt or pass --ckpt PATH")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        data = _load_safetensors(path)
    else:
        data = _load_pickle(path)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(v, torch.Tensor) for v in data.values()):
        raise NotACheckpointError(
            f"{path}: holds no state_dict of tensors; expected a Stable Diffusion .ckpt or "
            ".safetensors file")
    return dict(data)


def normalize_keys(state_dict: Mapping[str, torch.Tensor], use_ema: bool = False
                   ) -> dict[str, torch.Tensor]:
    """The state_dict our LatentDiffusion loads strictly.

    Drops `model_ema.*` (or, with use_ema, puts the EMA weights in place of the UNet's), drops
    `...position_ids` buffers and CompVis's `logvar`, and moves old CLIP keys (transformers < 4.31
    wrote them without `text_model.`) under `cond_stage_model.transformer.text_model.`.
    """
    out: dict[str, torch.Tensor] = {}
    ema = {k[len("model_ema."):]: v for k, v in state_dict.items() if k.startswith("model_ema.")}
    for key, value in state_dict.items():
        if key.startswith("model_ema.") or key.endswith("position_ids") or key == "logvar":
            continue
        prefix = "cond_stage_model.transformer."
        if key.startswith(prefix) and not key.startswith(prefix + "text_model."):
            key = prefix + "text_model." + key[len(prefix):]
        out[key] = value
    if use_ema:
        if not ema:
            raise NotACheckpointError("use_ema=True but the checkpoint has no model_ema.* weights")
        for key in [k for k in out if k.startswith("model.")]:
            # LitEma names a parameter by its path under `model.` with the dots removed.
            ema_key = key[len("model."):].replace(".", "")
            if ema_key not in ema:
                raise StateDictMismatchError(f"EMA weights lack {key} (looked for model_ema.{ema_key})")
            out[key] = ema[ema_key]
    return out
