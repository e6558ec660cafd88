"""`bench.py --profile`: where the time of one CFG step and one decode goes, against the peak.

Time per operator class comes from torch.profiler (each ATen op's self CPU time, so nested ops
are not counted twice); FLOPs per class from torch's FlopCounterMode on the same call; the peak
is a large square GEMM measured in the same process, in fp32 and bf16, so every GFLOP/s figure
can be read as a fraction of what this machine does at best.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from bench_models import ours_step_fn
from bench_util import flop_counter

from pww_ldm.gemm import onednn_available, onednn_matmul_t
from pww_ldm.vae import decode_latents

if TYPE_CHECKING:
    from bench import Bench

CLASSES = ("convolution", "GEMM", "attention", "norm", "elementwise", "copies/reorders", "other")
# Substrings of ATen op names (profiler: "aten::mkldnn_convolution"; FLOP counter:
# "aten.convolution.default"), first match wins; GEMM includes the region path's QK^T / PV matmuls.
_PATTERNS = (
    ("attention", ("scaled_dot_product", "flash_attention", "_softmax", "softmax")),
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("GEMM", ("addmm", "::mm", ".mm", "bmm", "matmul", "linear", "_mkl_linear", "baddbmm")),
    ("norm", ("group_norm", "layer_norm", "batch_norm")),
    ("copies/reorders", ("copy_", "contiguous", "clone", "_to_copy", "to_dense", "to_mkldnn",
                         "reorder", "cat", "upsample", "constant_pad", "index", "expand_as")),
    ("elementwise", ("add", "mul", "silu", "gelu", "div", "sub", "tanh", "exp", "sigmoid",
                     "where", "clamp", "pow", "rsqrt", "cos", "sin", "neg", "fill_", "zero_")),
)


def op_class(name: str) -> str:
    """The operator class (one of CLASSES) of an ATen op name from the profiler or FLOP counter."""
    for cls, needles in _PATTERNS:
        if any(n in name for n in needles):
            return cls
    return "other"


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n GEMM in `dtype` on the CPU (2 n^3 FLOPs a call): the faster
    of torch.mm (MKL in fp32) and oneDNN's linear, since on AMD processors MKL's fp32 path runs
    at about half of oneDNN's (pww_ldm.gemm).

    The best of `repeats` rather than the median: a peak is what the machine can do, and other
    work on a shared machine only ever makes a run slower.
    """
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    gemms = [lambda: torch.mm(a, b)]
    if onednn_available():
        gemms.append(lambda: onednn_matmul_t(a, b))
    best = float("inf")
    for gemm in gemms:
        gemm()  # warm-up: thread pool, oneDNN/MKL kernel selection
        for _ in range(repeats):
            start = time.perf_counter()
            gemm()
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def profile_by_class(fn: Callable[[], Any]) -> tuple[dict[str, float], dict[str, float], float]:
    """({class: self CPU seconds}, {class: GFLOP}, wall seconds) of one call of `fn`.

    `fn` is run once untimed (warm-up), once under the FLOP counter and once under the profiler.
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn()
        counter = flop_counter()
        with counter:
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            seconds[op_class(event.key)] += event.self_cpu_time_total / 1e6
    gflop: dict[str, float] = defaultdict(float)
    for op, count in counter.get_flop_counts().get("Global", {}).items():
        gflop[op_class(f"aten.{op}")] += count / 1e9
    return dict(seconds), dict(gflop), wall


def profile_table(results: dict[str, tuple[dict, dict, float]], peaks: dict[str, float],
                  peak_name: str) -> str:
    """The markdown table: per workload and class, time, share, GFLOP, GFLOP/s, % of peak."""
    peak = peaks[peak_name]
    lines = [f"| workload | op class | self CPU s | share | GFLOP | GFLOP/s | % of {peak_name} GEMM peak |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for workload, (seconds, gflop, wall) in results.items():
        total = sum(seconds.values())
        for cls in CLASSES:
            s, g = seconds.get(cls, 0.0), gflop.get(cls, 0.0)
            if s == 0 and g == 0:
                continue
            rate = g / s if g and s else None
            lines.append(f"| {workload} | {cls} | {s:.3f} | {100 * s / total:.1f} % | "
                         f"{g:.1f} | {'' if rate is None else f'{rate:.1f}'} | "
                         f"{'' if rate is None else f'{100 * rate / peak:.1f} %'} |")
        g_all = sum(gflop.values())
        lines.append(f"| {workload} | **all** (wall {wall:.3f} s) | {total:.3f} | 100 % | {g_all:.1f} "
                     f"| {g_all / wall:.1f} | {100 * g_all / wall / peak:.1f} % |")
    return "\n".join(lines)


def section_profile(b: Bench, ctx: dict[str, Any]) -> None:
    """Profile ours' CFG step with PwW on and one decode at the step's size; print the table."""
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    b.info["gemm_peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    px = b.args.latent * 8
    z = torch.randn(1, 4, b.args.latent, b.args.latent, generator=torch.Generator().manual_seed(1))
    workloads = {
        f"UNet CFG step {b.args.latent}x{b.args.latent}, PwW on": ours_step_fn(
            ctx["unet"], ctx["inputs"], ctx["regions"]),
        f"VAE decode {px} px": lambda: decode_latents(ctx["model"], z.to(b.device), tiled=False),
    }
    results = {name: profile_by_class(fn) for name, fn in workloads.items()}
    b.profile = {name: {"seconds": s, "gflop": g, "wall_s": w} for name, (s, g, w) in results.items()}
    peak_name = "bf16" if b.dtype == torch.bfloat16 else "fp32"
    b.profile_markdown = profile_table(results, peaks, peak_name)
    print(f"GEMM peak (best of 5, 2048^3 GEMM, torch.mm or oneDNN, {torch.get_num_threads()} threads): "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)
    print(b.profile_markdown, flush=True)
