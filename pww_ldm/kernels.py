"""Attention kernels: one signature, chosen once per model.

Every attention in the package (UNet self/cross attention, VAE mid-block attention) calls
`attention(q, k, v, kernel)`. The kernel is an attribute of each attention module, set for the
whole model by `set_attention_kernel`, so no global state or environment variable decides it.

- "sdpa": torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels
  where the device has them); the default.
- "xformers": xformers.ops.memory_efficient_attention, CUDA only, when installed.
- "math": the textbook computation with scores and softmax in float32; slow, but the reference.
- "auto": xformers on CUDA when importable, else sdpa (resolved by `resolve_kernel`).
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

KERNELS = ("auto", "sdpa", "xformers", "math")


class AttentionKernelError(ValueError):
    """An attention kernel name that is unknown or cannot run here."""


def xformers_available() -> bool:
    """True when the xformers package can be imported."""
    return importlib.util.find_spec("xformers") is not None


def resolve_kernel(name: str, device: torch.device | str) -> str:
    """Turn a user's kernel choice into the kernel that will run on `device`.

    "auto" picks xformers on CUDA when installed, else sdpa. Asking for xformers where it cannot
    run is an error rather than a silent fallback, so a benchmark never measures the wrong thing.
    """
    if name not in KERNELS:
        raise AttentionKernelError(
            f"unknown attention kernel {name!r}; choose one of {', '.join(KERNELS)}"
        )
    on_cuda = torch.device(device).type == "cuda"
    if name == "auto":
        return "xformers" if on_cuda and xformers_available() else "sdpa"
    if name == "xformers" and not (on_cuda and xformers_available()):
        raise AttentionKernelError(
            "the xformers kernel needs CUDA and the xformers package "
            "(pip install -e '.[xformers]'); use --attention sdpa or math instead"
        )
    return name


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with scores in float32.

    q: (B, H, N, d), k and v: (B, H, M, d) -> (B, H, N, d) in v's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops

    # xformers wants (B, N, H, d)
    out = xformers.ops.memory_efficient_attention(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
        v.transpose(1, 2).contiguous(),
    )
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "sdpa") -> torch.Tensor:
    """Scaled dot-product attention with the given kernel.

    q: (B, H, N, d), k and v: (B, H, M, d) -> (B, H, N, d). `kernel` is a resolved name
    (sdpa, xformers or math; see `resolve_kernel`).
    """
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if kernel == "xformers":
        return _xformers_attention(q, k, v)
    if kernel == "math":
        return math_attention(q, k, v)
    raise AttentionKernelError(f"attention kernel {kernel!r} was not resolved; use resolve_kernel")


def set_attention_kernel(model: torch.nn.Module, name: str = "auto") -> str:
    """Set the kernel of every attention module in `model`; returns the resolved name.

    Modules opt in by having an `attention_kernel` attribute.
    """
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    resolved = resolve_kernel(name, device)
    for module in model.modules():
        if hasattr(module, "attention_kernel"):
            module.attention_kernel = resolved
    return resolved
