"""BLAS (MKL) against oneDNN on the SD v1 UNet's linear shapes, CPU fp32: which `pww_ldm.gemm`
should pick on this machine.

    python benchmarks/bench_linears.py [--threads 2] [--repeats 9]

Shapes (rows x in x out) are the UNet's at 512 px with CFG batch 2: the attention projections,
GEGLU and feed-forward output at each resolution, and the text-context projections. Each shape's
two calls are timed interleaved, medians of --repeats; prints GFLOP/s per library, the ratio
oneDNN / BLAS per shape and over the sum of the shapes' times, and what `resolve_backend("auto")`
picks here.
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
from pww_ldm.gemm import cpu_vendor, onednn_available, onednn_matmul_t, resolve_backend  # noqa: E402

SHAPES = [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320), (2048, 640, 640),
          (2048, 640, 5120), (2048, 2560, 640), (512, 1280, 1280), (512, 1280, 10240),
          (512, 5120, 1280), (154, 768, 320), (154, 768, 1280)]


def time_shape(rows: int, inner: int, out: int, repeats: int) -> dict[str, float]:
    """Median seconds of x (rows, inner) @ w (out, inner)^T + b in each library."""
    x, w, b = torch.randn(rows, inner), torch.randn(out, inner), torch.randn(out)
    timed = time_interleaved({"blas": lambda: F.linear(x, w, b),
                              "onednn": lambda: onednn_matmul_t(x, w, b)},
                             torch.device("cpu"), repeats, count_flops=False)
    return {name: statistics.median(times) for name, (times, *_) in timed.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the per-shape table and the overall ratio; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    if not onednn_available():
        print("this torch build has no oneDNN linear op: nothing to compare")
        return 1
    tune_malloc()  # as the entry points do: no page faults on each fresh output
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu vendor {cpu_vendor()!r}, {torch.get_num_threads()} threads; auto picks "
          f"{resolve_backend('auto')}\n")
    print("| rows x in x out | BLAS GFLOP/s | oneDNN GFLOP/s | oneDNN / BLAS time |\n|---|---:|---:|---:|")
    totals = {"blas": 0.0, "onednn": 0.0}
    for rows, inner, out in SHAPES:
        med = time_shape(rows, inner, out, args.repeats)
        gflop = 2 * rows * inner * out / 1e9
        print(f"| {rows} x {inner} x {out} | {gflop / med['blas']:.0f} | {gflop / med['onednn']:.0f} "
              f"| {med['onednn'] / med['blas']:.3f} |")
        for name in totals:
            totals[name] += med[name]
    print(f"\nall shapes: oneDNN / BLAS time {totals['onednn'] / totals['blas']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
