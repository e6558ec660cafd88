"""3x3 convolutions by Winograd's minimal filtering: fewer multiplications for the same result.

F(m x m, 3 x 3) computes an m x m output tile from an (m + 2) x (m + 2) input tile with
(m + 2)^2 multiplications per channel pair instead of 9 m^2: 2.25x fewer for m = 2, 4x for m = 4.
Each tile d is transformed (B^T d B), the 3x3 kernel g too (G g G^T), the two are multiplied
position by position and summed over input channels (one GEMM per tile position: (tiles, I) @
(I, O)), and the sum is transformed back (A^T M A). The transforms here are Kronecker products,
so each is one small GEMM over all tiles and channels.

Why: the UNet's ResBlock convolutions are ~40 % of a CFG step and already run in oneDNN near the
CPU's fp32 GEMM rate on both diffusers' side and ours; only fewer FLOPs make them faster. The
result equals the direct convolution up to float rounding: the transforms are exact in float64
and rounded to fp32 once; F(4, 3) uses the points (0, 1, -1, 2, -1/2, inf), whose transforms
have smaller entries than the usual (0, +-1, +-2) (max abs error on one 320-channel conv of
unit-scale data: 1.6e-6 direct, 3.8e-6 F(2, 3), 2.9e-5 F(4, 3) with these points, 9.0e-5 with
+-2). The kernel's transform is recomputed at every call (never cached: for a 1280-channel conv
it holds 16x the kernel's 9 taps, 105 MB, and a LoRA merged in place must be seen), so
Winograd is used only where the batch of tiles is large enough to repay it (`tile_size`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..gemm import compiling

# Interpolation points of F(m, 3) (plus the point at infinity); see the module docstring.
POINTS = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 2.0, -0.5)}


def _cook_toom(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 1-D transforms of F(m, 3) in float64: B^T (a, a), G (a, 3), A^T (m, a), a = m + 2.

    A^T and G follow from the points (Lagrange interpolation, Cook-Toom); B^T is the unique
    solution of the bilinear identity A^T ((G g) * (B^T d)) = correlate(d, g)."""
    points, a = POINTS[m], m + 2
    p = torch.tensor(points, dtype=torch.float64)
    at = torch.zeros(m, a, dtype=torch.float64)
    at[:, : a - 1] = p[None, :] ** torch.arange(m, dtype=torch.float64)[:, None]
    at[m - 1, a - 1] = 1.0
    g = torch.zeros(a, 3, dtype=torch.float64)
    for j, pj in enumerate(points):
        denominator = math.prod(pj - pl for pl in points if pl != pj)
        g[j] = p[j] ** torch.arange(3, dtype=torch.float64) / denominator
    g[a - 1, 2] = 1.0
    # Y_i = sum_j A^T[i, j] G[j, k] B^T[j, l] d_l must equal d_{i + k}: linear in B^T.
    coefficients = torch.einsum("ij,jk,jJ,lL->iklJL", at, g, torch.eye(a, dtype=torch.float64),
                                torch.eye(a, dtype=torch.float64)).reshape(m * 3 * a, a * a)
    target = torch.zeros(m, 3, a, dtype=torch.float64)
    for i in range(m):
        for k in range(3):
            target[i, k, i + k] = 1.0
    bt = torch.linalg.lstsq(coefficients, target.reshape(-1, 1)).solution.view(a, a)
    return bt, g, at


@functools.lru_cache(maxsize=8)
def transforms(m: int, dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D transforms as Kronecker products, in `dtype` on `device`:
    input (a^2, a^2), kernel (a^2, 9), output (m^2, a^2)."""
    bt, g, at = _cook_toom(m)
    return tuple(torch.kron(t, t).to(dtype=dtype, device=device) for t in (bt, g, at))


# Fewer channels than this on either side: direct (the GEMMs get too thin to repay the
# transforms; 128 -> 128 at 512 px, the smallest measured, is 0.80x direct).
MIN_CHANNELS = 128


def tile_size(shape: Sequence[int], out_channels: int) -> int:
    """The output tile m for a conv of an input of `shape` (N, I, H, W) (the output grid's H, W)
    to out_channels: 4, 2, or 0 (direct).

    The GEMM saving grows with the number of output pixels N*H*W, the kernel transform's cost
    does not (it scales with I*O like the GEMM), so beyond the channel floor the choice depends
    on N*H*W only. Thresholds measured on SD's UNet and VAE shapes
    (`benchmarks/bench_winograd.py`: at 16x16 with CFG batch 2 F(2, 3) is 0.65x direct and
    F(4, 3) 0.72x, at 8x8 both lose)."""
    n, c, h, w = shape
    if min(c, out_channels) < MIN_CHANNELS:
        return 0
    pixels = n * h * w
    if pixels >= 2048 and min(h, w) >= 16:
        return 4
    if pixels >= 512 and min(h, w) >= 8:
        return 2
    return 0


# Chunks of tile rows: each chunk's GEMMs read the whole transformed kernel (a^2 * I * O floats,
# 38 MB for a 512-channel F(4, 3)) again, so a chunk's tiles should weigh at least as much; and
# at least CHUNK_BYTES of them, or the GEMMs get too small. Smaller chunks than the whole image
# keep a large decoder convolution's temporaries in cache (a 256 -> 128-channel conv at 512 px:
# 0.80x direct in 7 MB chunks, 1.18x unchunked) and bound its extra memory.
CHUNK_BYTES = 8 * 2**20


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     m: int) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) by F(m x m, 3 x 3): x (N, I, H, W), weight (O, I, 3, 3),
    bias (O,) or None -> (N, O, H, W), contiguous (NCHW)."""
    return _convolve(x, weight, bias, m, m, transforms(m, x.dtype, x.device)[0], tuple(x.shape[-2:]))


@functools.lru_cache(maxsize=8)
def upsampling_transform(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The input transform of F(m, 3) on a nearest-2x-upsampled grid, read from the small grid:
    (a^2, p^2) with p = m / 2 + 2. Output tile t needs upsampled rows m t - 1 .. m t + m, which
    are small-grid rows m t / 2 - 1 + (j + 1) // 2 for j = 0 .. m + 1: a selection S (a, p)
    applied before B^T."""
    a, p = m + 2, m // 2 + 2
    select = torch.zeros(a, p, dtype=torch.float64)
    select[torch.arange(a), (torch.arange(a) + 1) // 2] = 1.0
    bt_select = _cook_toom(m)[0] @ select
    return torch.kron(bt_select, bt_select).to(dtype=dtype, device=device)


def winograd_upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              m: int) -> torch.Tensor:
    """conv2d(nearest 2x of x, weight, bias, padding=1) by F(m x m, 3 x 3), m even, without the
    upsampled tensor: x (N, I, H, W) -> (N, O, 2H, 2W). 2.25 multiplications per output and
    channel pair for m = 4, against 4 for the folded phase kernels (pww_ldm.models.upsample)."""
    h, w = x.shape[-2:]
    # Output tiles start every m upsampled = m / 2 small-grid pixels.
    return _convolve(x, weight, bias, m, m // 2, upsampling_transform(m, x.dtype, x.device),
                     (2 * h, 2 * w))


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: int,
              step: int, input_t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The output (N, O, *size) of F(m, 3) on x (N, I, H, W) zero-padded by one pixel, whose
    input tiles (p x p, p^2 = input_t's columns) start every `step` pixels: in chunks of tile
    rows, each padded on its own (no padded copy of the whole input)."""
    n, c = x.shape[:2]
    out_ch, a = weight.shape[0], m + 2
    tiles_h, tiles_w = -(-size[0] // m), -(-size[1] // m)
    _, kernel_t, output_t = transforms(m, x.dtype, x.device)
    # Layouts chosen so that every GEMM reads both operands untransposed (10-15 % faster than
    # an NHWC gather with a transposed kernel operand, measured on the UNet's shapes): kernels
    # (a^2, O, I), transformed tiles (a^2, I, tiles), products (a^2, O, tiles).
    kernels = (kernel_t @ weight.reshape(out_ch * c, 9).t()).view(a * a, out_ch, c)
    out = x.new_empty(n, out_ch, *size)
    row_bytes = a * a * (c + out_ch) * n * tiles_w * x.element_size()
    kernel_bytes = kernels.numel() * kernels.element_size()
    rows = min(tiles_h, max(-(-kernel_bytes // row_bytes), CHUNK_BYTES // row_bytes, 1))
    overlap = math.isqrt(input_t.shape[1]) - step  # an input tile's pixels beyond its step
    for first in range(0, tiles_h, rows):
        count = min(rows, tiles_h - first)
        slab = _padded_rows(x, first * step, count * step + overlap, tiles_w * step + overlap)
        products = _products(slab, kernels, input_t, step, count, tiles_w)
        target = out[:, :, first * m:(first + count) * m]
        if target.shape[-2:] == (count * m, tiles_w * m):
            _untransform(products, output_t, bias, target, m)
        else:  # the last, partial tiles: through a chunk-sized buffer
            full = x.new_empty(n, out_ch, count * m, tiles_w * m)
            _untransform(products, output_t, bias, full, m)
            target.copy_(full[:, :, : target.shape[-2], : size[1]])
    return out


def _padded_rows(x: torch.Tensor, first: int, rows: int, width: int) -> torch.Tensor:
    """Rows first .. first + rows of x zero-padded by one pixel (top/left) and to `width`:
    (N, I, rows, width)."""
    h, w = x.shape[-2:]
    start = first - 1  # the x row of the slab's first row
    lo, hi = max(start, 0), min(start + rows, h)
    return F.pad(x[:, :, lo:hi], (1, width - 1 - w, lo - start, start + rows - hi))


def _products(slab: torch.Tensor, kernels: torch.Tensor, input_t: torch.Tensor, step: int,
              rows: int, tiles_w: int) -> torch.Tensor:
    """The GEMMs of `rows` tile rows of a padded slab (N, I, ., .): (a^2, O, N * rows * tiles_w)."""
    n, c = slab.shape[:2]
    a2, p = input_t.shape[0], math.isqrt(input_t.shape[1])
    s_n, s_c, s_h, s_w = slab.stride()
    tiles = slab.as_strided((p, p, c, n, rows, tiles_w), (s_h, s_w, s_c, s_n, step * s_h, step * s_w),
                            slab.storage_offset())
    count = n * rows * tiles_w
    transformed = (input_t @ tiles.reshape(p * p, c * count)).view(a2, c, count)
    return torch.bmm(kernels, transformed)


def _untransform(products: torch.Tensor, output_t: torch.Tensor, bias: torch.Tensor | None,
                 out: torch.Tensor, m: int) -> None:
    """Output tiles (+ bias) from products (a^2, O, N * rows * tiles_w) into out (N, O, rows * m,
    tiles_w * m), a view of whole tiles."""
    n, out_ch, height, width = out.shape
    rows, tiles_w = height // m, width // m
    outputs = output_t @ products.view(products.shape[0], -1)
    # (m, m, O, N, rows, tiles_w) -> (N, O, rows, m, tiles_w, m)
    source = outputs.view(m, m, out_ch, n, rows, tiles_w).permute(3, 2, 4, 0, 5, 1)
    grid = out.view(n, out_ch, rows, m, tiles_w, m)
    if bias is None:
        grid.copy_(source)
    else:
        torch.add(source, bias.view(1, -1, 1, 1, 1, 1), out=grid)


def plain_3x3(conv: nn.Conv2d) -> bool:
    """Whether `conv` is a plain 3x3, stride-1, padding-1 (zeros), dense convolution."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether `conv` on `x` may run by Winograd: a plain 3x3 conv, CPU fp32 inference (no
    autograd; not while torch.compile traces, where inductor picks kernels)."""
    grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    return (plain_3x3(conv) and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and not grad and not compiling())


class Conv3x3(nn.Conv2d):
    """nn.Conv2d (same parameters and state-dict keys) whose CPU fp32 inference takes Winograd
    where `tile_size` finds it faster; every other case is the direct convolution.
    x (N, I, H, W) -> (N, O, H, W), in x's memory format."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.winograd = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = tile_size(x.shape, self.out_channels) if self.winograd and applies(self, x) else 0
        if m == 0:
            return super().forward(x)
        return in_layout_of(winograd_conv3x3(x, self.weight, self.bias, m), x)


def in_layout_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out (NCHW) in x's memory format: channels_last only when x is laid out so."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out


def set_winograd(model: nn.Module, enabled: bool) -> int:
    """Turn Winograd on (the default) or off (the direct convolution, oneDNN's arithmetic) in
    every `Conv3x3` of `model`; returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, Conv3x3):
            module.winograd = bool(enabled)
            count += 1
    return count
