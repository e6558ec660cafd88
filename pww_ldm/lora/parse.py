"""Reading a LoRA file (kohya / A1111 or diffusers / peft) into low-rank layers of our model.

A LoRA layer holds `down` (r, in[, kh, kw]) and `up` (out, r[, 1, 1]); merged, it adds
delta W = multiplier * scale * up @ down to the layer's weight, scale = alpha / r (1 without an
alpha), as A1111's `network_lora` and peft compute it. 3x3 LoCon convs compose the two convs:
delta[o, i, y, x] = sum_r up[o, r] down[r, i, y, x].

Unmatched keys: A1111 loads the layers it can match and only logs the rest (at debug level);
we do the same but say it as a `UnmatchedLoraKeysWarning` listing them. A layer whose name
matches but whose shape does not means another architecture (an SDXL LoRA on SD 1.x shares
block names), and that is refused, as is a file matching no layer at all.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import SAFETENSORS_SUFFIXES, NotACheckpointError, read_state_dict
from .errors import LoraFormatError, LoraMismatchError, LoraNotFoundError
from .family import describe_lora, describe_model, foreign_family
from .keys import Target, layer_aliases

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


class UnmatchedLoraKeysWarning(UserWarning):
    """Some keys of a LoRA file name no layer of the model; the rest was applied."""


# (suffix of a file key, part). The order matters: longer, more specific suffixes first.
_PARTS = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".alpha", "alpha"),
)  # fmt: skip
# (start of a key segment, kind): LyCORIS and other network kinds A1111 knows, not low-rank LoRA.
_UNSUPPORTED = (("hada_w", "LoHa"), ("lokr_w", "LoKr"), ("oft_", "OFT"), ("lora_mid", "LoCon CP/Tucker"),
                ("dora_scale", "DoRA"), ("lora_magnitude_vector", "DoRA"), ("on_input", "IA3"),
                ("w_norm", "norm"), ("b_norm", "norm"))  # fmt: skip
_UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.")


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank update of `target` (a weight of ours, or rows of it); tensors on the CPU.

    key: the module key as the file spells it; scale: alpha / r (1 without alpha).
    """

    key: str
    target: Target
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """scale * up @ down as a float32 tensor of the target weight's `shape`, on `device`."""
        down = self.down.to(device=device, dtype=torch.float32)
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        if down.dim() == 4 and down.shape[2:] != (1, 1):
            delta = torch.einsum("or,rikl->oikl", up, down)
        else:
            delta = up @ down.flatten(1)
        return delta.reshape(shape) * self.scale


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file matched to one model: its layers and the keys that named nothing."""

    path: Path
    layers: tuple[LoraLayer, ...]
    unmatched: tuple[str, ...]


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({key: tensor}, safetensors metadata) of a LoRA file; pickles go through the safe loader."""
    path = Path(path)
    if not path.is_file():
        raise LoraNotFoundError(f"LoRA file {path} does not exist; pass the path of a .safetensors file")
    try:
        tensors = read_state_dict(path)  # a .pt/.ckpt asking for code raises UnsafeCheckpointError
    except NotACheckpointError:
        raise LoraFormatError(f"{path}: holds no tensors, so it is not a LoRA file") from None
    metadata: dict[str, str] = {}
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    return tensors, metadata


def _module_key(key: str) -> tuple[str, str] | None:
    # (module key as `layer_aliases` spells it, part) or None for keys that are not LoRA parts.
    for suffix, part in _PARTS:
        if key.endswith(suffix):
            module = key[: -len(suffix)].removeprefix("base_model.model.")
            module = module.replace(".processor.", ".")
            if module.startswith(_UNET_ROOTS):
                module = "unet." + module
            if module.startswith("unet.") and module.endswith(".to_out"):
                module += ".0"  # diffusers' attention processors call to_out.0 `to_out_lora`
            return module, part
    return None


def _peft_scales(metadata: dict[str, str]) -> dict[str, dict]:
    # diffusers writes each component's peft LoraConfig as "unet.lora_alpha", "unet.r", ...
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    configs: dict[str, dict] = {}
    for key, value in json.loads(raw).items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def _pattern(patterns: dict, name: str):
    # peft's pattern keys match a module name as a whole or as a dotted suffix.
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", name):
            return value
    return None


def _scale(module: str, parts: dict[str, torch.Tensor], configs: dict[str, dict]) -> float:
    rank = parts["down"].shape[0]
    if "alpha" in parts:
        return float(parts["alpha"].item()) / rank
    component, _, name = module.partition(".")
    config = configs.get(component)
    if not config or module.startswith("lora_"):
        return 1.0  # no alpha: A1111 and peft both use scale 1 (alpha = r)
    alpha = _pattern(config.get("alpha_pattern"), name) or config.get("lora_alpha", rank)
    return float(alpha) / (rank**0.5 if config.get("use_rslora") else rank)


def _unsupported_kind(key: str) -> str | None:
    for segment in key.split(".")[1:]:  # the first segment is (part of) the module name
        if segment in ("diff", "diff_b"):
            return "full-weight diff"
        for prefix, kind in _UNSUPPORTED:
            if segment.startswith(prefix):
                return kind
    return None


def _group(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict], list[str]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    other: list[str] = []
    for key, value in tensors.items():
        kind = _unsupported_kind(key)
        if kind is not None:
            raise LoraFormatError(f"{path}: is a {kind} network (key {key}); only plain LoRA / "
                                  "LoCon (lora_down/lora_up, lora_A/lora_B) can be merged")
        found = _module_key(key)
        if found is None:
            other.append(key)
        else:
            grouped.setdefault(found[0], {})[found[1]] = value
    if not grouped:
        raise LoraFormatError(
            f"{path}: no LoRA keys (…lora_down.weight / …lora_up.weight / …lora_A.weight); "
            f"its keys look like {sorted(tensors)[:3]}: is it a checkpoint or an embedding?")
    return grouped, other


def target_weight(modules: dict[str, nn.Module], target: Target) -> torch.Tensor:
    """The tensor a LoRA layer updates: the parameter, or its row block (a view)."""
    weight = getattr(modules[target.module], target.param)
    return weight if target.rows is None else weight[target.rows[0]:target.rows[1]]


def _check_shape(module: str, parts: dict, weight: torch.Tensor) -> str | None:
    down, up = parts["down"], parts["up"]
    ok = (up.shape[0] == weight.shape[0] and up.flatten(1).shape[1] == down.shape[0]
          and down.flatten(1).shape[1] == weight[0].numel()
          and (down.dim() != 4 or weight.dim() != 4 or down.shape[1:] == weight.shape[1:]))
    if ok:
        return None
    return f"{module}: up {tuple(up.shape)} down {tuple(down.shape)} vs weight {tuple(weight.shape)}"


def match_lora(model: nn.Module, path: str | Path) -> LoraFile:
    """Read `path` and match its layers to `model`; refuses files made for another model.

    Raises LoraNotFoundError, LoraFormatError, LoraMismatchError (nothing matches, or names match
    with the wrong shapes), checkpoint.UnsafeCheckpointError (a pickle with code). Warns
    `UnmatchedLoraKeysWarning` listing keys that name no layer (the rest is still applied).
    """
    path = Path(path)
    tensors, metadata = read_lora_file(path)
    grouped, unmatched = _group(path, tensors)
    foreign = foreign_family(tensors)
    if foreign is not None:
        raise LoraMismatchError(f"{path}: looks like {foreign}; {describe_model(model)} takes "
                                "SD 1.x / 2.x LoRAs only")
    aliases, modules = layer_aliases(model), dict(model.named_modules())
    configs = _peft_scales(metadata)
    layers, wrong = [], []
    for module, parts in grouped.items():
        if "down" not in parts or "up" not in parts:
            unmatched.extend(f"{module}.{p}" for p in parts)
            continue
        target = aliases.get(module)
        if target is None:
            unmatched.append(module)
            continue
        problem = _check_shape(module, parts, target_weight(modules, target))
        if problem:
            wrong.append(problem)
            continue
        layers.append(LoraLayer(module, target, parts["down"], parts["up"], _scale(module, parts, configs)))
    if wrong or not layers:
        what = f"{len(wrong)} layers have other shapes ({'; '.join(wrong[:3])})" if wrong else (
            f"none of its {len(grouped)} layers names a layer of this model "
            f"(e.g. {', '.join(sorted(grouped)[:3])})")
        raise LoraMismatchError(
            f"{path}: looks like {describe_lora(tensors)}, not one for {describe_model(model)}: "
            f"{what}. Use a LoRA trained for this model's family.")
    if unmatched:
        warnings.warn(f"{path}: {len(unmatched)} keys name no layer of this model and were "
                      f"ignored (as A1111 does): {', '.join(sorted(unmatched)[:20])}",
                      UnmatchedLoraKeysWarning, stacklevel=2)
    return LoraFile(path, tuple(layers), tuple(sorted(unmatched)))
