"""Random LoRA files for the tests, keyed from diffusers' / transformers' module names.

The kohya keys are built from the oracle models' own names (`lora_unet_` + diffusers path with
`_`, `lora_te_` + transformers path), never from our mapping, so a mapping mistake shows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


def lora_pair(module: nn.Module, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for a Linear ((r, in), (out, r)) or a Conv2d ((r, in, kh, kw), (out, r, 1, 1))."""
    if isinstance(module, nn.Linear):
        down = torch.randn(rank, module.in_features, generator=g)
        up = torch.randn(module.out_features, rank, generator=g)
    else:
        down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=g)
        up = torch.randn(module.out_channels, rank, 1, 1, generator=g)
    return down * 0.1, up * 0.1


def kohya_lora(unet: nn.Module, text_encoder: nn.Module, seed: int = 0, alpha: float | None = 2.0
               ) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA on every Linear/Conv2d of a diffusers UNet and every Linear of the CLIP
    encoder layers; ranks 1-4 drawn per layer, `.alpha` = alpha for all (None: per-layer random).
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def add(key: str, module: nn.Module) -> None:
        rank = int(torch.randint(1, 5, (), generator=g))
        out[key + ".lora_down.weight"], out[key + ".lora_up.weight"] = lora_pair(module, rank, g)
        value = alpha if alpha is not None else float(torch.randint(1, 9, (), generator=g))
        out[key + ".alpha"] = torch.tensor(value)

    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            add("lora_unet_" + name.replace(".", "_"), module)
    for name, module in text_encoder.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in name:
            full = name if name.startswith("text_model.") else "text_model." + name
            add("lora_te_" + full.replace(".", "_"), module)
    return out


def write(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a LoRA state_dict as .safetensors (with metadata) or as a torch pickle (.pt)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    else:
        torch.save(tensors, path)
    return path
