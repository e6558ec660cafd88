"""Linear layers whose CPU fp32 GEMM can run in oneDNN instead of the BLAS library.

torch's CPU builds send fp32 `F.linear` to MKL's sgemm, which on AMD processors takes a slower
code path than on Intel's: on a 2-core AMD EPYC with AVX-512, sgemm ran SD's linear shapes at
120-170 GFLOP/s while oneDNN's matmul (the library torch already uses for convolutions) ran the
same shapes at 220-370 (`benchmarks/bench.py --only linear`). `Linear` is an `nn.Linear` (same
parameters, state-dict keys and LoRA handling) whose forward takes oneDNN where that is the
faster library; the result is the same product in fp32 with another summation order (relative
differences ~1e-6, like any two GEMM libraries).

Backends, set per module by `set_linear_backend` (no global switch decides it):
- "auto" (the default): oneDNN on CPUs whose vendor is not Intel (MKL's fast path is Intel's),
  else the BLAS library, i.e. what `nn.Linear` does;
- "onednn" / "aten": force one or the other.
oneDNN is used only for CPU fp32 inputs without autograd (its op has no backward) and outside
torch.compile (inductor chooses its own kernels); every other case is `F.linear`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()


class Linear(nn.Linear):
    """nn.Linear with the CPU GEMM library chosen per module (see the module docstring).

    x (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.onednn = resolve_backend("auto") == "onednn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.onednn and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not _needs_grad(x, self.weight)
                and not _compiling()):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _needs_grad(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def set_linear_backend(model: nn.Module, backend: str) -> int:
    """Choose the CPU fp32 GEMM library of every `Linear` in `model` ("auto", "onednn",
    "aten"); returns how many modules were set."""
    onednn = resolve_backend(backend) == "onednn"
    count = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.onednn = onednn
            count += 1
    return count
