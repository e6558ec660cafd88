"""`bench.py --fast`: the opt-in fast path (pww_ldm.fast) against the eager model and diffusers.

`enable_fast` compiles the UNet in place (`nn.Module.compile`); calling its `forward` directly
still runs it eagerly, so eager, fast and diffusers are timed in one process, interleaved (the
VAE decoder is not part of the fast path: the vae section measures it). The first fast call
compiles: its time is the start-up cost the switch stands for, reported as such.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from bench_models import diffusers_step_fn
from bench_sections import _row, max_diff, step_case
from bench_util import time_interleaved

from pww_ldm.conditioning import UNetContext
from pww_ldm.fast import disable_fast, enable_fast
from pww_ldm.region import PaintWithWords

if TYPE_CHECKING:
    from bench import Bench


def _first_call(fn: Any) -> tuple[float, Any]:
    """(seconds, output) of one call under inference_mode: the compile of a fast case."""
    with torch.inference_mode():
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out


def _note(compile_s: float, fast: torch.Tensor, eager: torch.Tensor) -> str:
    return f"first call (compile) {compile_s:.0f} s; max abs diff vs eager {max_diff(fast, eager):.1e}"


def _step_fns(ctx: dict[str, Any]) -> dict[str, Any]:
    unet, inputs = ctx["unet"], ctx["inputs"]
    context = UNetContext(inputs["emb"], inputs["sigma"], (PaintWithWords(ctx["regions"]),),
                          cond_rows=slice(1, 2))
    return {"eager_pww": lambda: unet.forward(inputs["x"], inputs["t"], context=context),
            "fast_pww": lambda: unet(inputs["x"], inputs["t"], context=context),
            "diffusers": diffusers_step_fn(ctx["dunet"], inputs)}


def section_fast(b: Bench, ctx: dict[str, Any]) -> None:
    """UNet CFG step with PwW on: eager, fast (compiled, frozen) and diffusers' plain step."""
    enable_fast(ctx["model"])
    try:
        steps = _step_fns(ctx)
        compile_s, fast_out = _first_call(steps["fast_pww"])
        _, eager_out = _first_call(steps["eager_pww"])
        r = time_interleaved(steps, b.device, b.args.repeats, b.args.warmup, count_flops=False)
        note = _note(compile_s, fast_out, eager_out)
        case = f"{step_case(b)}, PwW on (5 regions)"
        eager = _row(b, "fast", case, "pww_ldm", r["eager_pww"], kernel="eager")
        fast = _row(b, "fast", case, "pww_ldm", r["fast_pww"], kernel="fast", note=note)
        theirs = _row(b, "fast", step_case(b), "diffusers", r["diffusers"], kernel="eager")
        b.ratio(f"fast UNet step PwW on / diffusers plain ({b.dtype_name})", fast, theirs, 0.85)
        b.ratio(f"fast / eager UNet step PwW on ({b.dtype_name})", fast, eager)
    finally:  # later sections and runs measure the eager model
        disable_fast(ctx["model"])
