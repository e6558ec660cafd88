"""The measuring sections of benchmarks/bench.py (see its docstring); each appends rows and
ratios to the run's `Bench`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from bench_models import DTYPES, cast_unet, diffusers_step_fn, ours_step_fn
from bench_util import (
    Row,
    cpu_bf16,
    measured,
    run_worker,
    time_fn,
    time_interleaved,
)

from pww_ldm.gemm import resolve_backend
from pww_ldm.kernels import set_attention_kernel, xformers_unusable
from pww_ldm.models.linear import set_linear_backend
from pww_ldm.models.upsample import set_folded_upsample
from pww_ldm.models.winograd import set_winograd
from pww_ldm.vae import TILE_ABOVE_PIXELS, decode_latents

if TYPE_CHECKING:
    from bench import Bench


def _row(bench: Bench, section: str, case: str, impl: str, result: tuple, dtype: str | None = None,
         kernel: str = "sdpa", note: str = "") -> Row:
    times, gflop, _, peak = result
    row = measured(Row(section, case, impl, dtype or bench.dtype_name, kernel, note=note),
                   times, gflop)
    row.peak_mib = peak
    return bench.add(row)


def step_case(b: Bench) -> str:
    """The name of the UNet step case: latent grid and CFG batch."""
    return f"step {b.args.latent}x{b.args.latent} B2"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float32."""
    return (a.float() - b.float()).abs().max().item()


def baseline_step(b: Bench, ctx: dict[str, Any]) -> None:
    """Ours with PwW off alone, for runs that skip the unet section but compare with it."""
    times, gflop, _ = time_fn(ours_step_fn(ctx["unet"], ctx["inputs"]), b.device, b.args.repeats,
                              b.args.warmup)
    ctx["ours"] = b.add(measured(Row("unet", f"{step_case(b)}, PwW off", "pww_ldm", b.dtype_name),
                                 times, gflop))


def switched_off(fn: Any, *switches: tuple[Any, Any, Any]) -> Any:
    """`fn` run with each (setter, model, off value) applied, restored afterwards to the default
    (True, or "auto" for the linear backend)."""
    def run() -> Any:
        for setter, model, off in switches:
            setter(model, off)
        try:
            return fn()
        finally:
            for setter, model, off in switches:
                setter(model, "auto" if isinstance(off, str) else True)
    return run


def reference_convs(model: torch.nn.Module, fn: Any) -> Any:
    """`fn` run with CompVis's convolution arithmetic: the reference upsamplers (interpolate,
    then conv) instead of the folded / Winograd ones, and every 3x3 conv direct (oneDNN)."""
    return switched_off(fn, (set_folded_upsample, model, False), (set_winograd, model, False))


def direct_convs(model: torch.nn.Module, fn: Any) -> Any:
    """`fn` run with Winograd off: every 3x3 conv direct (oneDNN), upsamplers folded."""
    return switched_off(fn, (set_winograd, model, False))


def blas_linears(model: torch.nn.Module, fn: Any) -> Any:
    """`fn` run with every Linear on the BLAS library (`nn.Linear`'s GEMM) instead of the
    backend `pww_ldm.models.linear` picked for this CPU."""
    return switched_off(fn, (set_linear_backend, model, "aten"))


def section_unet(b: Bench, ctx: dict[str, Any]) -> None:
    """Ours (PwW off), diffusers, ours (PwW on), ours with direct 3x3 convs, with the reference
    convolutions and with BLAS linears (PwW off): one step each, interleaved."""
    plain = ours_step_fn(ctx["unet"], ctx["inputs"])
    r = time_interleaved({"ours": plain,
                          "diffusers": diffusers_step_fn(ctx["dunet"], ctx["inputs"]),
                          "ours_pww": ours_step_fn(ctx["unet"], ctx["inputs"], ctx["regions"]),
                          "ours_direct": direct_convs(ctx["unet"], plain),
                          "ours_ref_conv": reference_convs(ctx["unet"], plain),
                          "ours_blas": blas_linears(ctx["unet"], plain)},
                         b.device, b.args.repeats, b.args.warmup)
    diff = max_diff(r["ours"][2], r["diffusers"][2])
    ctx["ours"] = _row(b, "unet", f"{step_case(b)}, PwW off", "pww_ldm", r["ours"])
    ctx["diffusers"] = _row(b, "unet", f"{step_case(b)}", "diffusers", r["diffusers"],
                            note=f"max abs diff vs ours {diff:.2e}")
    ctx["ours_pww"] = _row(b, "unet", f"{step_case(b)}, PwW on (5 regions)", "pww_ldm",
                           r["ours_pww"])
    b.ratio(f"UNet step ours PwW on / diffusers ({b.dtype_name})", ctx["ours_pww"],
            ctx["diffusers"], 1.0)
    b.ratio(f"UNet step ours PwW off / diffusers ({b.dtype_name})", ctx["ours"], ctx["diffusers"])
    b.ratio(f"PwW overhead: on / off ({b.dtype_name})", ctx["ours_pww"], ctx["ours"], 1.03)
    b.ratio("GFLOP/s ours PwW off / diffusers", ctx["ours"], ctx["diffusers"], what="gflops")
    diff = max_diff(r["ours"][2], r["ours_direct"][2])
    direct = _row(b, "unet", f"{step_case(b)}, PwW off, direct 3x3 convs", "pww_ldm",
                  r["ours_direct"], note=f"max abs diff vs Winograd {diff:.2e}")
    b.ratio(f"UNet step Winograd / direct 3x3 convs, PwW off ({b.dtype_name})", ctx["ours"], direct)
    diff = max_diff(r["ours"][2], r["ours_ref_conv"][2])
    ref = _row(b, "unet", f"{step_case(b)}, PwW off, reference convolutions", "pww_ldm",
               r["ours_ref_conv"], note=f"max abs diff vs ours {diff:.2e}")
    b.ratio(f"UNet step ours / reference convolutions, PwW off ({b.dtype_name})", ctx["ours"], ref)
    diff = max_diff(r["ours"][2], r["ours_blas"][2])
    blas = _row(b, "unet", f"{step_case(b)}, PwW off, BLAS linears", "pww_ldm", r["ours_blas"],
                note=f"max abs diff vs {resolve_backend('auto')} linears {diff:.2e}")
    b.ratio(f"UNet step {resolve_backend('auto')} / BLAS linears, PwW off ({b.dtype_name})",
            ctx["ours"], blas)


def section_kernels(b: Bench, ctx: dict[str, Any]) -> None:
    """The step with each other attention kernel (ours; diffusers' xformers on CUDA)."""
    why_not = xformers_unusable(b.device, b.dtype)
    kernels = ["math"] + ([] if why_not else ["xformers"])
    try:
        for kernel in kernels:
            set_attention_kernel(ctx["model"], kernel)
            fns = {"ours": ours_step_fn(ctx["unet"], ctx["inputs"])}
            if b.device.type == "cuda":  # PwW on: its attn2 path is kernel-independent; CPU time
                fns["ours_pww"] = ours_step_fn(ctx["unet"], ctx["inputs"], ctx["regions"])
            if kernel == "xformers":
                ctx["dunet"].enable_xformers_memory_efficient_attention()
                fns["diffusers"] = diffusers_step_fn(ctx["dunet"], ctx["inputs"])
            r = time_interleaved(fns, b.device, b.args.repeats_other, b.args.warmup)
            _row(b, "kernels", "step, PwW off", "pww_ldm", r["ours"], kernel=kernel)
            if "ours_pww" in r:
                _row(b, "kernels", "step, PwW on", "pww_ldm", r["ours_pww"], kernel=kernel)
            if "diffusers" in r:
                _row(b, "kernels", "step", "diffusers", r["diffusers"], kernel=kernel)
    finally:  # later sections measure the default kernel whatever happened here
        set_attention_kernel(ctx["model"], "sdpa")
        if "xformers" in kernels:
            ctx["dunet"].disable_xformers_memory_efficient_attention()  # back to sdpa
    if why_not:
        b.add(Row("kernels", "step", "pww_ldm", b.dtype_name, "xformers", note=f"skipped: {why_not}"))


def section_precision(b: Bench, ctx: dict[str, Any]) -> None:
    """Other precisions: CPU bf16 (autocast, weights); CUDA fp16 / bf16 / fp32 weights."""
    unet, dunet, inputs = ctx["unet"], ctx["dunet"], ctx["inputs"]
    if b.device.type == "cpu":
        note = "CPU has bf16 instructions" if cpu_bf16() else "CPU lacks avx512_bf16/amx: emulated"

        def autocast(fn: Any) -> Any:
            def run() -> Any:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fn()
            return run

        r = time_interleaved({"ac": autocast(ours_step_fn(unet, inputs))},
                             b.device, b.args.repeats_other, b.args.warmup)
        ac = _row(b, "precision", "step, PwW off", "pww_ldm", r["ac"], "bf16-autocast", note=note)
        b.ratio("CPU bf16 autocast / fp32 step (ours, PwW off)", ac, ctx["ours"], 0.6)
        others = ["bf16"] if b.dtype_name != "bf16" else ["fp32"]
    else:
        others = [d for d in ("fp16", "bf16", "fp32") if d != b.dtype_name]
    for name in others:
        dt = DTYPES[name]
        # random weights: rounding them does not matter here
        note = cast_unet(unet, dt)
        dunet.to(dt)
        cast = {k: (v.to(dt) if k in ("x", "emb") else v) for k, v in inputs.items()}
        r = time_interleaved({"ours": ours_step_fn(unet, cast),
                              "diffusers": diffusers_step_fn(dunet, cast),
                              "ours_pww": ours_step_fn(unet, cast, ctx["regions"])},
                             b.device, b.args.repeats_other, b.args.warmup)
        ours = _row(b, "precision", "step, PwW off", "pww_ldm", r["ours"], name, note=note)
        diff = _row(b, "precision", "step", "diffusers", r["diffusers"], name)
        pww = _row(b, "precision", "step, PwW on", "pww_ldm", r["ours_pww"], name)
        b.ratio(f"UNet step ours PwW on / diffusers ({name})", pww, diff, 1.0)
        b.ratio(f"PwW overhead: on / off ({name})", pww, ours, 1.03)
        if b.device.type == "cpu" and name == "bf16":
            b.ratio("CPU bf16 weights / fp32 step (ours, PwW off)", ours, ctx["ours"], 0.6)
    cast_unet(unet, b.dtype)
    dunet.to(b.dtype)


def section_compile(b: Bench, ctx: dict[str, Any]) -> None:
    """torch.compile of both UNets: it/s of a 512x512 CFG step, PwW on against diffusers."""
    cu = torch.compile(ctx["unet"])
    cd = torch.compile(ctx["dunet"])
    fns = {"ours": ours_step_fn(cu, ctx["inputs"]),
           "diffusers": diffusers_step_fn(cd, ctx["inputs"]),
           "ours_pww": ours_step_fn(cu, ctx["inputs"], ctx["regions"])}
    start = time.perf_counter()
    r = time_interleaved(fns, b.device, b.args.repeats_other, max(2, b.args.warmup),
                         count_flops=False)
    note = f"compile+warm-up {time.perf_counter() - start:.0f} s total"
    eager = {"ours": ctx.get("ours"), "diffusers": ctx.get("diffusers"), "ours_pww": ctx.get("ours_pww")}
    r = {k: (v[0], eager[k].gflop if eager[k] else None, *v[2:]) for k, v in r.items()}
    rows = {k: _row(b, "compile", f"{step_case(b)}{', PwW on' if k == 'ours_pww' else ''}",
                    "diffusers" if k == "diffusers" else "pww_ldm", r[k], kernel="sdpa+compile")
            for k in fns}
    for row in rows.values():
        row.note = f"{1 / row.median_s:.2f} it/s" + (f"; {note}" if row is rows["ours"] else "")
    b.ratio(f"compiled: ours PwW on / diffusers ({b.dtype_name})", rows["ours_pww"],
            rows["diffusers"], 1.0)


def section_vae(b: Bench, ctx: dict[str, Any]) -> None:
    """VAE decode of one latent per size: ours (auto-tiled / untiled) and diffusers'.

    Sizes the pipeline tiles are decoded tiled by ours and also untiled (the same work as
    diffusers'); the largest size runs once per case without warm-up when --vae-repeats is 1.
    """
    model, dvae = ctx["model"], ctx["dvae"]
    largest = max(b.args.vae_sizes)
    for px in b.args.vae_sizes:
        z = torch.randn(1, 4, px // 8, px // 8, generator=torch.Generator().manual_seed(1))
        z = z.to(b.device)
        # tiled where the pipeline tiles (from 1024 px); --quick tiles its largest size instead
        tiled = px * px >= TILE_ABOVE_PIXELS or (b.args.quick and px == largest)
        fns = {"ours": lambda z=z, t=tiled: decode_latents(model, z, tiled=t),
               "diffusers": lambda z=z: dvae.decode(z / model.scale_factor).sample}
        if tiled and not b.args.no_untiled:
            fns["ours_untiled"] = lambda z=z: decode_latents(model, z, tiled=False)
        if not tiled:
            fns["ours_direct"] = direct_convs(model, fns["ours"])
            fns["ours_ref_conv"] = reference_convs(model, fns["ours"])
        warm = 1 if b.args.vae_repeats > 1 or px != largest else 0
        r = time_interleaved(fns, b.device, b.args.vae_repeats, warm)
        note = "" if warm else "1 run, no warm-up"
        label = " (tiled)" if tiled else ""
        ours = _row(b, "vae", f"decode {px}x{px}{label}", "pww_ldm", r["ours"], "fp32", note=note)
        theirs = _row(b, "vae", f"decode {px}x{px}", "diffusers", r["diffusers"], "fp32",
                      note=note)
        b.ratio(f"VAE decode {px} ours{label} / diffusers", ours, theirs)
        if "ours_untiled" in r:
            diff = "" if r["ours_untiled"][2] is None else \
                f"max abs diff vs diffusers {max_diff(r['ours_untiled'][2], r['diffusers'][2]):.2e}"
            untiled = _row(b, "vae", f"decode {px}x{px} (untiled)", "pww_ldm", r["ours_untiled"],
                           "fp32", note="; ".join(x for x in (note, diff) if x))
            b.ratio(f"VAE decode {px} ours untiled / diffusers", untiled, theirs)
        if "ours_direct" in r:
            direct = _row(b, "vae", f"decode {px}x{px}, direct 3x3 convs", "pww_ldm",
                          r["ours_direct"], "fp32", note=note)
            b.ratio(f"VAE decode {px} Winograd / direct 3x3 convs", ours, direct)
            ref = _row(b, "vae", f"decode {px}x{px}, reference convolutions", "pww_ldm",
                       r["ours_ref_conv"], "fp32", note=note)
            b.ratio(f"VAE decode {px} ours / reference convolutions", ours, ref)


def section_alloc(b: Bench) -> None:
    """The step in two fresh processes: with pww_ldm's malloc tuning, and with glibc defaults."""
    rows = {}
    for tuned in (True, False):
        res = run_worker({"task": "unet_step", "quick": b.args.quick, "device": b.args.device,
                          "dtype": b.dtype_name, "latent": b.args.latent, "repeats": b.args.repeats_other,
                          "warmup": b.args.warmup, "malloc_tuning": tuned})
        case = "step, malloc tuned" if res["malloc_tuned"] else "step, glibc malloc defaults"
        rows[tuned] = b.add(measured(Row("alloc", case, "pww_ldm", b.dtype_name,
                                         note="fresh process"), res["times"], res["gflop"]))
    b.ratio("UNet step without / with malloc tuning", rows[False], rows[True])


def section_txt2img(b: Bench) -> None:
    """Whole txt2img per size and implementation, each in a fresh process."""
    found: dict[tuple[str, int], Row] = {}
    for size in b.args.sizes:
        for impl in ("ours", "diffusers"):
            res = run_worker({"task": "txt2img", "impl": impl, "quick": b.args.quick,
                              "device": b.args.device, "dtype": b.dtype_name, "size": size,
                              "steps": b.args.steps})
            row = Row("txt2img", f"{size}x{size}, {b.args.steps} Euler steps",
                      "pww_ldm" if impl == "ours" else "diffusers", b.dtype_name,
                      median_s=res["time_s"], min_s=res["time_s"], times_s=[res["time_s"]])
            if b.device.type == "cuda":
                row.peak_mib = res["cuda_peak_mib"]
                row.note = f"CUDA allocator peak; peak RSS {res['rss_peak_mib']:.0f} MiB"
            else:
                row.peak_mib = res["rss_peak_mib"]
                row.note = (f"peak RSS ({res['rss_method']}); {res['rss_start_mib']:.0f} MiB "
                            "before the run")
            row.note += "; warm (2nd run)" if res.get("warm") else "; cold (1st run)"
            row.note += "; phases s: " + ", ".join(f"{k} {v:.2f}" for k, v in res["phases_s"].items())
            found[(impl, size)] = b.add(row)
        ours, theirs = found[("ours", size)], found[("diffusers", size)]
        b.ratio(f"txt2img {size} time ours / diffusers", ours, theirs)
        b.ratio(f"txt2img {size} peak memory ours / diffusers", ours, theirs, 1.0, "peak_mib")
    size = max(b.args.sizes)
    peak = found[("ours", size)].peak_mib / 1024
    b.ratios.append({"name": f"txt2img {size} peak memory ours (GiB)", "value": peak,
                     "target": "<= 24", "met": peak <= 24})
