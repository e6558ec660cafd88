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
    """Whether torch.compile is tracing this call (inductor then picks its own kernels)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()


def onednn_matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., K) @ b (N, K)^T -> (..., N) in oneDNN (no autograd: inference only)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
