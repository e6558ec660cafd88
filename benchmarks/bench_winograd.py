"""Direct 3x3 convolution (oneDNN) against Winograd F(2, 3) and F(4, 3) on SD's conv shapes,
CPU fp32: where `pww_ldm.models.winograd.tile_size` should switch.

    python benchmarks/bench_winograd.py [--threads 2] [--repeats 7] [--vae]

Shapes are the SD v1 UNet ResBlock convolutions at 512 px with CFG batch 2 (one per distinct
(channels, grid); --vae adds the VAE decoder's at 512 px, batch 1). Each shape's calls are timed
interleaved, medians of --repeats, with the Winograd kernel transform included (it runs at every
call); prints ms per path, the ratio to direct, the max abs error of each against float64, and
what tile_size picks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

from bench_util import time_interleaved  # noqa: E402

from pww_ldm.allocator import tune_malloc  # noqa: E402
from pww_ldm.models.upsample import FoldedKernels, upsample_conv  # noqa: E402
from pww_ldm.models.winograd import (  # noqa: E402
    Conv3x3,
    tile_size,
    winograd_conv3x3,
    winograd_upsample_conv3x3,
)

# (batch, in channels, out channels, grid)
UNET = [(2, 320, 320, 64), (2, 960, 320, 64), (2, 640, 640, 32), (2, 1920, 640, 32),
        (2, 1280, 1280, 16), (2, 2560, 1280, 16), (2, 1280, 1280, 8), (2, 2560, 1280, 8)]
# upsamplers: (batch, channels, small grid); nearest 2x, then a 3x3 conv to the same channels
UNET_UP = [(2, 1280, 8), (2, 1280, 16), (2, 640, 32)]
VAE_UP = [(1, 512, 64), (1, 512, 128), (1, 256, 256)]
VAE = [(1, 512, 512, 64), (1, 512, 512, 128), (1, 512, 256, 256), (1, 256, 256, 256), (1, 256, 128, 512),
       (1, 128, 128, 512)]


def time_shape(n: int, c: int, o: int, size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{path: (median ms, max abs error against float64)} for one conv shape."""
    x = torch.randn(n, c, size, size)
    w, b = torch.randn(o, c, 3, 3) / (9 * c) ** 0.5, torch.randn(o)
    fns = {"direct": lambda: F.conv2d(x, w, b, padding=1),
           "F(2,3)": lambda: winograd_conv3x3(x, w, b, 2),
           "F(4,3)": lambda: winograd_conv3x3(x, w, b, 4)}
    timed = time_interleaved(fns, torch.device("cpu"), repeats, count_flops=False)
    exact = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    return {name: (statistics.median(times) * 1e3, (result.double() - exact).abs().max().item())
            for name, (times, _, result, _) in timed.items()}


def time_upsampler(n: int, c: int, size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{path: (median ms, max abs error against float64)} for one upsampler (folded phase
    kernels, pww_ldm's previous default, against Winograd on the upsampled grid)."""
    x = torch.randn(n, c, size, size)
    conv = Conv3x3(c, c, 3, padding=1).requires_grad_(False)
    conv.winograd = False  # upsample_conv takes the folded phase kernels, built once (the UNet
    w, b = conv.weight, conv.bias  # keeps them between calls; the VAE builds them per decode)
    kernels = FoldedKernels()
    fns = {"folded": lambda: upsample_conv(x, conv, kernels),
           "F(2,3)": lambda: winograd_upsample_conv3x3(x, w, b, 2),
           "F(4,3)": lambda: winograd_upsample_conv3x3(x, w, b, 4)}
    timed = time_interleaved(fns, torch.device("cpu"), repeats, count_flops=False)
    up = F.interpolate(x.double(), scale_factor=2, mode="nearest")
    exact = F.conv2d(up, w.double(), b.double(), padding=1)
    return {name: (statistics.median(times) * 1e3, (result.double() - exact).abs().max().item())
            for name, (times, _, result, _) in timed.items()}


def print_upsamplers(shapes: list[tuple[int, int, int]], repeats: int) -> None:
    """The upsampler table."""
    print("\n| upsampler N x C @ grid -> 2x | folded ms | F(2,3) ms (x) | F(4,3) ms (x) "
          "| max abs err f / 2 / 4 | picks |\n|---|---:|---:|---:|---|---:|")
    for n, c, size in shapes:
        r = time_upsampler(n, c, size, repeats)
        f = r["folded"][0]
        picked = 4 if tile_size((n, c, 2 * size, 2 * size), c) == 4 else 0  # as upsample_conv
        print(f"| {n} x {c} @ {size} | {f:.1f} | {r['F(2,3)'][0]:.1f} ({r['F(2,3)'][0] / f:.2f}) "
              f"| {r['F(4,3)'][0]:.1f} ({r['F(4,3)'][0] / f:.2f}) | {r['folded'][1]:.1e} / "
              f"{r['F(2,3)'][1]:.1e} / {r['F(4,3)'][1]:.1e} | {picked or 'folded'} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Print the per-shape table; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--vae", action="store_true", help="also the VAE decoder's shapes")
    p.add_argument("--only-upsamplers", action="store_true", help="only the upsampler table")
    args = p.parse_args(argv)
    tune_malloc()  # as the entry points do
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads\n")
    print("| N x I -> O @ grid | direct ms | F(2,3) ms (x) | F(4,3) ms (x) | max abs err d / 2 / 4 "
          "| picks |\n|---|---:|---:|---:|---|---:|")
    for n, c, o, size in [] if args.only_upsamplers else UNET + (VAE if args.vae else []):
        r = time_shape(n, c, o, size, args.repeats)
        d = r["direct"][0]
        picked = tile_size((n, c, size, size), o)
        print(f"| {n} x {c} -> {o} @ {size} | {d:.1f} | {r['F(2,3)'][0]:.1f} ({r['F(2,3)'][0] / d:.2f}) "
              f"| {r['F(4,3)'][0]:.1f} ({r['F(4,3)'][0] / d:.2f}) | {r['direct'][1]:.1e} / "
              f"{r['F(2,3)'][1]:.1e} / {r['F(4,3)'][1]:.1e} | {picked or 'direct'} |", flush=True)
    print_upsamplers(UNET_UP + (VAE_UP if args.vae else []), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
