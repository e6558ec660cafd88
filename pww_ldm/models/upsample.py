"""Nearest 2x upsampling followed by a 3x3 convolution, as one convolution on the small grid.

conv3x3(nearest2x(x)) repeats each input pixel in a 2x2 block before the convolution, so each of
the four output phases (a, b) (output pixel (2i + a, 2j + b)) sees only a 2x2 window of x: along
each axis, phase 0 reads x[i - 1] with tap w[0] and x[i] with w[1] + w[2], phase 1 reads x[i]
with w[0] + w[1] and x[i + 1] with w[2]. The four phases' 2x2 kernels, stacked as 4x the output
channels, run as convolutions over x padded by one pixel: 4 instead of 9 multiply-adds per
output pixel and channel pair, and no 4x larger upsampled input. The result equals the
reference up to float rounding (the taps are summed before, not after, the multiplication;
relative error ~4e-7 in fp32). For CPU fp32 inference with enough channels, Winograd on the
upsampled grid (`pww_ldm.models.winograd.winograd_upsample_conv3x3`, 2.25 multiply-adds per
output) takes over from the folded kernels. Stable Diffusion's UNet (3 upsamplers) and VAE
decoder (3, at up to 512 px and 256 channels, about 28 % of the decoder's FLOPs) both use this
pattern.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..gemm import compiling
from . import winograd


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4 * O, I, 2, 2): the kernels of phases (0, 0), (0, 1), (1, 0), (1, 1)."""
    def phases(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, mid, last = w.select(dim, 0), w.select(dim, 1), w.select(dim, 2)
        return torch.stack([first, mid + last], dim), torch.stack([first + mid, last], dim)

    return torch.cat([k for rows in phases(weight, 2) for k in phases(rows, 3)], 0)


def folds(conv: nn.Conv2d) -> bool:
    """Whether `conv` is the plain 3x3, stride-1, padding-1 convolution this rewrite covers."""
    return winograd.plain_3x3(conv)


def _fold(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        bias = None if conv.bias is None else conv.bias.detach().repeat(4)
        return phase_kernels(conv.weight.detach()), bias


class FoldedKernels:
    """The phase kernels of a UNet upsampler's conv, kept between its calls (building them for a
    1280-channel conv takes ~0.5 s on one CPU core, mostly the strided copy into conv layout;
    they hold 16/9 of the conv's weight: 236 MB in fp32 for SD v1's three). Rebuilt when the
    weight changes (a LoRA merged in place bumps the tensor's version counter), moves to another
    dtype or device, or after `drop_folded_kernels` (the decode calls it, so the cache never
    adds to the decode's peak memory)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget the kernels (they are rebuilt at the next call)."""
        self._key: tuple | None = None
        self._kernels: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def get(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(4O, I, 2, 2) kernels and (4O,) bias (None without one) for `conv`."""
        w, b = conv.weight, conv.bias
        key = (w.data_ptr(), w._version, w.dtype, w.device,
               None if b is None else (b.data_ptr(), b._version))
        if key != self._key or self._kernels is None:
            self._kernels, self._key = _fold(conv), key
        return self._kernels


def set_folded_upsample(model: nn.Module, enabled: bool) -> int:
    """Turn the folded path on (the default) or off (the reference's interpolate-then-conv; with
    `pww_ldm.models.winograd.set_winograd(model, False)` too, the CompVis arithmetic bit for bit)
    in every upsampler of `model`; returns how many were set. Where Winograd applies (CPU fp32
    inference, see `uses_winograd`) it replaces the folded kernels."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fold") and hasattr(module, "folded_kernels"):
            module.fold = bool(enabled)
            count += 1
    return count


def drop_folded_kernels(model: nn.Module) -> None:
    """Free the cached phase kernels of every upsampler in `model` (see FoldedKernels)."""
    for module in model.modules():
        kernels = getattr(module, "folded_kernels", None)
        if isinstance(kernels, FoldedKernels):
            kernels.clear()


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d, kernels: FoldedKernels | None = None
                  ) -> torch.Tensor:
    """conv(nearest 2x of x): x (B, I, h, w) -> (B, O, 2h, 2w), in x's memory format.

    kernels: a cache of the phase kernels (None: built for this call; always so while compiling,
    where weight freezing folds them into constants). Falls back to the reference (interpolate,
    then conv) while gradients are needed, so training and attention guidance differentiate the
    reference's graph."""
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    n, c, h, w = x.shape
    # Only F(4, 3): F(2, 3) on the upsampled grid is no faster than the cached folded kernels
    # (1.04x at SD's 8 -> 16 upsampler, `benchmarks/bench_winograd.py`).
    if uses_winograd(conv, x) and winograd.tile_size((n, c, 2 * h, 2 * w), conv.out_channels) == 4:
        return winograd.in_layout_of(winograd.winograd_upsample_conv3x3(x, conv.weight, conv.bias, 4), x)
    weight, bias = _fold(conv) if kernels is None or compiling() else kernels.get(conv)
    out_ch = conv.out_channels
    out: torch.Tensor | None = None
    # One convolution per phase, each written into its stride of `out` before the next runs:
    # the four phases in one 4O-channel convolution would hold a second output-sized tensor (at
    # 768 px the VAE's last upsampler's output is 576 MiB). padding=1 pads inside the kernel,
    # without a padded copy of x.
    for a in (0, 1):
        for b in (0, 1):
            phase = slice((2 * a + b) * out_ch, (2 * a + b + 1) * out_ch)
            phased = F.conv2d(x, weight[phase], None if bias is None else bias[phase], padding=1)
            if out is None:  # the conv's dtype: x's, or autocast's
                out = phased.new_empty(n, out_ch, h, 2, w, 2)
            out[:, :, :, a, :, b] = phased[:, :, a:a + h, b:b + w]  # phased: (B, O, h+1, w+1)
    return winograd.in_layout_of(out.view(n, out_ch, 2 * h, 2 * w), x)


def uses_winograd(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the upsampler's conv takes Winograd on x: a Conv3x3 with it on, where it applies."""
    return bool(getattr(conv, "winograd", False)) and winograd.applies(conv, x)
