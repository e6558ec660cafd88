"""Attention kernels: one signature, chosen once per model.

Every attention in the package (UNet self/cross attention, VAE mid-block attention) calls
`attention(q, k, v, kernel)`. The kernel is an attribute of each attention module, set for the
whole model by `set_attention_kernel`, so no global state or environment variable decides it.

- "sdpa": torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels
  where the device has them); the default.
- "xformers": xformers.ops.memory_efficient_attention, CUDA only, when installed.
- "math": the textbook computation with scores and softmax in float32; slow, but the reference.
- "auto": xformers on CUDA when it runs there, else sdpa (resolved by `resolve_kernel`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

KERNELS = ("auto", "sdpa", "xformers", "math")


class AttentionKernelError(ValueError):
    """An attention kernel name that is unknown or cannot run here."""


def xformers_unusable(device: torch.device | str, dtype: torch.dtype = torch.float16) -> str:
    """"" when xformers' memory_efficient_attention runs on `device` in `dtype`, else why not.

    An installed wheel built for another torch or CUDA imports but fails on its first call, so
    this runs one tiny attention rather than trusting the import.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "xformers needs CUDA"
    return _xformers_probe(str(device), dtype)


@functools.cache
def _xformers_probe(device: str, dtype: torch.dtype) -> str:
    try:
        import xformers.ops
    except ImportError:
        return "xformers is not installed (pip install -e '.[xformers]')"
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways; all mean "no"
        return f"xformers does not import here: {str(exc).splitlines()[0][:160]}"
    try:
        q = torch.zeros(1, 8, 1, 40, device=device, dtype=dtype)
        xformers.ops.memory_efficient_attention(q, q, q)
    except Exception as exc:  # noqa: BLE001
        return f"xformers is installed but does not run here: {str(exc).splitlines()[0][:160]}"
    return ""


def resolve_kernel(name: str, device: torch.device | str) -> str:
    """Turn a user's kernel choice into the kernel that will run on `device`.

    "auto" picks xformers on CUDA when it runs there, else sdpa. Asking for xformers where it
    cannot run is an error rather than a silent fallback, so a benchmark never measures the wrong
    thing.
    """
    if name not in KERNELS:
        raise AttentionKernelError(
            f"unknown attention kernel {name!r}; choose one of {', '.join(KERNELS)}"
        )
    if name == "auto":
        return "sdpa" if xformers_unusable(device) else "xformers"
    if name == "xformers":
        why_not = xformers_unusable(device)
        if why_not:
            raise AttentionKernelError(f"{why_not}; use --attention sdpa or math instead")
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
