"""Which library runs CPU fp32 GEMMs: oneDNN where MKL's sgemm takes its slow path.

torch's CPU builds send fp32 matmuls to MKL, which on AMD processors takes a slower code path
than on Intel's (measured on a 2-core AMD EPYC: 120-170 GFLOP/s on SD's linear shapes, oneDNN
220-370). Used by `pww_ldm.models.linear` (the UNet's linears) and by the region plug-ins'
own score passes (`pww_ldm.region.self_attention.row_extremes`). Backends: "auto" (oneDNN on
CPUs whose vendor is not Intel, else BLAS), "onednn", "aten".
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BACKENDS = ("auto", "onednn", "aten")


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """Whether this torch build has oneDNN and its dense linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The first `vendor_id` of /proc/cpuinfo ("GenuineIntel", "AuthenticAMD", ...), "" if unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve_backend(backend: str) -> str:
    """"onednn" or "aten" for a name of BACKENDS on this machine; ValueError for other names."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown linear backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "aten" if cpu_vendor() == "GenuineIntel" else "onednn"
    return backend if backend == "aten" or onednn_available() else "aten"


def compiling() -> bool:
    """Whether dynamo is tracing (torch.compiler.is_compiling is torch >= 2.3; we support 2.1):
    library-specific kernels step aside then, inductor picks its own."""
    check = getattr(torch.compiler, "is_compiling", None)
    if check is None:
        from torch import _dynamo

        check = _dynamo.is_compiling
    return bool(check())


def onednn_applies(*tensors: torch.Tensor) -> bool:
    """Whether oneDNN's dense op may take these operands: CPU, float32, no autograd (it has no
    backward), not under torch.compile. Which library is faster is `resolve_backend`'s call."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not grad and not compiling())


def onednn_matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """a (..., K) @ b (N, K)^T + bias (N,) -> (..., N) in oneDNN (inference only)."""
    # Strided operands (a head of a (n, N, H, d) tensor, say) take a reference path that is
    # ~1000x slower (one 512 x 4096 x 40 block: 1.19 s vs 0.63 ms); a copy costs microseconds.
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), bias, "none", [], "")
