"""Attention kernel choice: names, the xformers probe, and that every kernel computes the same."""

import sys
import types

import pytest
import torch

from pww_ldm import kernels
from pww_ldm.kernels import AttentionKernelError, attention, resolve_kernel, xformers_unusable


def test_auto_is_sdpa_on_cpu_and_xformers_is_refused_there():
    assert resolve_kernel("auto", "cpu") == "sdpa"
    assert resolve_kernel("math", "cpu") == "math"
    with pytest.raises(AttentionKernelError, match="needs CUDA"):
        resolve_kernel("xformers", "cpu")
    with pytest.raises(AttentionKernelError, match="unknown attention kernel 'flash'"):
        resolve_kernel("flash", "cpu")


def test_a_broken_xformers_install_makes_auto_fall_back_to_sdpa(monkeypatch):
    # A wheel built for another torch imports, then fails on its first call (seen on torch 2.11):
    # "auto" must not pick it, and asking for it by name must say why.
    def broken(*_args, **_kwargs):
        raise RuntimeError("No operator found for `memory_efficient_attention_forward`")

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = broken
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    kernels._xformers_probe.cache_clear()
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: torch.empty(0))  # no CUDA needed here
    try:
        assert "does not run here" in xformers_unusable("cuda")
        assert resolve_kernel("auto", "cuda") == "sdpa"
        with pytest.raises(AttentionKernelError, match="does not run here.*use --attention sdpa"):
            resolve_kernel("xformers", "cuda")
    finally:
        kernels._xformers_probe.cache_clear()


def test_sdpa_equals_the_math_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (50, 77, 77))
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(AttentionKernelError, match="not resolved"):
        attention(q, k, v, "auto")
