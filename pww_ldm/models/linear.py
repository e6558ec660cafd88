"""Linear layers whose CPU fp32 GEMM can run in oneDNN instead of the BLAS library.

`Linear` is an `nn.Linear` (same parameters, state-dict keys and LoRA handling) whose forward
takes oneDNN where `pww_ldm.gemm` finds it the faster library (why: see there); the result is
the same product in fp32 with another summation order (relative differences ~1e-6, like any two
GEMM libraries; 4.2e-6 max abs on a full UNet step, `benchmarks/bench.py --only unet`, row
"BLAS linears").

Backends, set per module by `set_linear_backend` (no global switch decides it): "auto" (the
default: oneDNN on CPUs whose vendor is not Intel, else what `nn.Linear` does), "onednn",
"aten". oneDNN is used only where `pww_ldm.gemm.onednn_applies`; every other case is `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..gemm import onednn_applies, onednn_matmul_t, resolve_backend


class Linear(nn.Linear):
    """nn.Linear with the CPU GEMM library chosen per module (see the module docstring).

    x (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.onednn = resolve_backend("auto") == "onednn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and onednn_applies(x, self.weight):
            return onednn_matmul_t(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


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
