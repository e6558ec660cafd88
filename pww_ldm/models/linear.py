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

import torch
import torch.nn.functional as F
from torch import nn

from ..gemm import BACKENDS, compiling, resolve_backend

__all__ = ["BACKENDS", "Linear", "resolve_backend", "set_linear_backend"]


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
                and not compiling()):
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
