"""The CPU GEMM library of the UNet's linears (pww_ldm.models.linear): oneDNN vs BLAS."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from pww_ldm import gemm as linear_module
from pww_ldm.conditioning import UNetContext
from pww_ldm.gemm import onednn_available, resolve_backend
from pww_ldm.models.linear import Linear, set_linear_backend

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build lacks oneDNN")


class OpNames(TorchDispatchMode):
    """Records the name of every operator dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def onednn_calls(fn) -> tuple[torch.Tensor, int]:
    with OpNames() as ops:
        out = fn()
    return out, sum("_linear_pointwise" in name for name in ops.names)


@needs_onednn
@pytest.mark.parametrize("bias, transposed", [(True, False), (False, True)])
def test_onednn_linear_is_the_same_product_as_blas(bias, transposed):
    torch.manual_seed(0)
    layer = Linear(48, 24, bias=bias).requires_grad_(False)
    set_linear_backend(layer, "onednn")
    x = torch.randn(2, 48, 37).transpose(1, 2) if transposed else torch.randn(2, 37, 48)
    out, calls = onednn_calls(lambda: layer(x))
    assert calls == 1 and out.shape == (2, 37, 24)
    exact = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    blas_error = (F.linear(x, layer.weight, layer.bias).double() - exact).abs().max()
    # another summation order: within a few ulps of the float64 product, like BLAS itself
    assert (out.double() - exact).abs().max() <= 4 * blas_error + 1e-6


@needs_onednn
def test_autograd_bf16_and_the_aten_backend_take_f_linear():
    torch.manual_seed(1)
    layer = Linear(16, 8)
    set_linear_backend(layer, "onednn")
    x = torch.randn(3, 16, requires_grad=True)
    out, calls = onednn_calls(lambda: layer(x))  # parameters need grad: oneDNN has no backward
    assert calls == 0
    out.square().sum().backward()
    expected = x.detach().clone().requires_grad_(True)
    F.linear(expected, layer.weight, layer.bias).square().sum().backward()
    assert torch.equal(x.grad, expected.grad)
    with torch.no_grad():
        assert onednn_calls(lambda: layer.bfloat16()(x.bfloat16()))[1] == 0
        layer.float()
        assert onednn_calls(lambda: layer(x))[1] == 1
        set_linear_backend(layer, "aten")
        out, calls = onednn_calls(lambda: layer(x))
        assert calls == 0 and torch.equal(out, F.linear(x, layer.weight, layer.bias))


def test_auto_follows_the_cpu_vendor_and_bad_names_are_refused(monkeypatch):
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: "GenuineIntel")
    assert resolve_backend("auto") == "aten"  # MKL's own fast path
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: "AuthenticAMD")
    assert resolve_backend("auto") == ("onednn" if onednn_available() else "aten")
    with pytest.raises(ValueError, match="valid: auto, onednn, aten"):
        resolve_backend("mkl")


@needs_onednn
def test_unet_with_onednn_linears_matches_blas():
    model = tiny_model(seed=3)
    unet = model.model.diffusion_model
    count = set_linear_backend(model, "onednn")
    assert count == sum(isinstance(m, torch.nn.Linear) for m in unet.modules()) > 0
    g = torch.Generator().manual_seed(3)
    x, t, text = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, generator=g) * 999, torch.randn(
        2, 77, 32, generator=g)
    with torch.no_grad():
        fast, calls = onednn_calls(lambda: unet(x, t, UNetContext(text, torch.ones(2))))
        set_linear_backend(model, "aten")
        blas = unet(x, t, UNetContext(text, torch.ones(2)))
    assert calls == count  # every linear of the UNet ran in oneDNN, once
    torch.testing.assert_close(fast, blas, rtol=1e-5, atol=1e-5)
