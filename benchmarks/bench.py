"""Speed and memory of pww_ldm against diffusers, in one run.

    python benchmarks/bench.py [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--quick]
        [--repeats N] [--steps N] [--vae-sizes 512,1024] [--compile] [--only unet,vae,...]

Sections, in this order (all by default; random weights, no checkpoint needed):
  unet       one denoising step of the SD v1 UNet (64x64 latent = 512 px, a CFG batch [x; x]):
             ours with PwW off, diffusers' UNet2DConditionModel with the same weights (diffusers'
             own LDM conversion), ours with PwW on (5 regions, weight function "max"), ours with
             direct 3x3 convs (no Winograd), with CompVis's convolution arithmetic, with BLAS
             linears
  precision  the step in other precisions (CPU: bf16 autocast (ours, PwW off) and bf16 weights;
             CUDA: fp16 / bf16 / fp32 weights), ours with PwW off and on, and diffusers
  vae        VAE decode per --vae-sizes; ours tiles the largest size (as the pipeline does from
             1024 px) and also decodes it untiled (the same work as diffusers'); sizes it does not
             tile also with direct 3x3 convs and with CompVis's convolution arithmetic
  kernels    the step with the other attention kernels (math; xformers where it runs)
  compile    (--compile) torch.compile'd UNets: it/s with PwW on against diffusers
  txt2img    a whole txt2img (Euler, --steps) at --sizes, ours and a minimal diffusers loop with
             the same sigmas and CFG batch 2, each in a fresh process: time, phases, peak memory
             (peak RSS on the CPU; the CUDA allocator's peak); CUDA runs once untimed first
  alloc      (CPU) the step with and without pww_ldm's malloc tuning, each in a fresh process
  fast       (--fast) pww_ldm.fast's compiled UNet step (PwW on) against the eager
             model and diffusers, with the compile time and the max abs difference to eager
  profile    (--profile) self CPU time per operator class of one CFG step (PwW on) and one
             decode, GFLOP/s per class, and a 2048^3 GEMM's fp32 / bf16 peak measured in the run
Timings: warm-up (the first run under torch's FlopCounterMode, which gives the GFLOP), device
synchronisation, the median of --repeats runs, comparable cases interleaved run by run. Prints
markdown tables (machine, rows, key ratios against their targets) and writes JSON to
benchmarks/results/ atomically after each section. --quick: tiny configs at a quarter of the
sizes and 2 repeats, for a CI smoke run (< 60 s on an idle 2-core CPU).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_fast import section_fast  # noqa: E402
from bench_models import DTYPES, build_diffusers, build_ours, region_context, unet_inputs  # noqa: E402
from bench_profile import section_profile  # noqa: E402
from bench_sections import (  # noqa: E402
    baseline_step,
    section_alloc,
    section_compile,
    section_kernels,
    section_precision,
    section_txt2img,
    section_unet,
    section_vae,
)
from bench_util import (  # noqa: E402
    Row,
    machine_info,
    malloc_trim,
    markdown_table,
    ratio_table,
    rows_as_dicts,
    write_json_atomic,
)

from pww_ldm.allocator import tune_malloc  # noqa: E402

SECTIONS = ("unet", "precision", "vae", "kernels", "compile", "fast", "profile", "txt2img", "alloc")
IN_PROCESS = ("unet", "precision", "vae", "kernels", "compile", "fast", "profile")
RESULTS = Path(__file__).resolve().parent / "results"


class Bench:
    """Holds the run's settings, rows and ratios, and writes the JSON after each section."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.dtype_name = args.dtype
        self.dtype = DTYPES[args.dtype]
        self.rows: list[Row] = []
        self.ratios: list[dict[str, Any]] = []
        self.info = machine_info(self.device)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{args.device}_{args.dtype}" + ("_quick" if args.quick else f"_{stamp}")
        self.path = Path(args.out) if args.out else RESULTS / f"{name}.json"
        self.started = time.time()
        self.profile: dict[str, Any] = {}
        self.profile_markdown = ""

    def add(self, row: Row) -> Row:
        """Record a row and print it as it comes."""
        self.rows.append(row)
        print(f"  {row.section:9s} {row.case:32s} {row.impl:10s} {row.dtype:10s} {row.kernel:8s} "
              f"median {row.median_s if row.median_s is not None else float('nan'):.4f} s "
              f"{row.note}", flush=True)
        return row

    def ratio(self, name: str, num: Row | None, den: Row | None, target: float | None = None,
              what: str = "median_s") -> None:
        """Record num/den of a field (time by default), and whether it meets `target` (<=)."""
        a = getattr(num, what, None) if num else None
        b = getattr(den, what, None) if den else None
        value = a / b if a is not None and b else None
        met = None if target is None or value is None else value <= target
        self.ratios.append({"name": name, "value": value, "met": met,
                            "target": "" if target is None else f"<= {target:g}"})

    def save(self) -> None:
        """Write the JSON results (atomically)."""
        write_json_atomic(self.path, {
            "machine": self.info, "args": vars(self.args), "device": str(self.device),
            "elapsed_s": time.time() - self.started, "loadavg_now": list(os.getloadavg()),
            "rows": rows_as_dicts(self.rows),
            "ratios": self.ratios, "profile": self.profile})


def guarded(b: Bench, name: str, fn: Any, *args: Any) -> None:
    """Run a section; a failure becomes a row saying so (the other sections still run)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - a benchmark run reports and goes on
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")[:300]
        b.add(Row(name, "FAILED", "", b.dtype_name, "", note=message))
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
    b.save()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults depend on --device and --quick."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="UNet/CLIP dtype (default fp32 on CPU, fp16 on CUDA); the VAE stays fp32")
    p.add_argument("--quick", action="store_true", help="tiny configs, 2 repeats (CI smoke)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (median)")
    p.add_argument("--repeats-other", type=int, default=None,
                   help="timed runs in the precision, kernels, compile and alloc sections "
                        "(default --repeats); the unet section always uses --repeats")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per case first")
    p.add_argument("--vae-repeats", type=int, default=None, help="timed runs of VAE decodes")
    p.add_argument("--steps", type=int, default=None, help="Euler steps of the txt2img section")
    p.add_argument("--sizes", default=None, help="txt2img sizes in px (default 512,768,1024)")
    p.add_argument("--vae-sizes", default=None, help="VAE decode sizes in px (default 512,1024)")
    p.add_argument("--no-untiled", action="store_true",
                   help="skip ours' untiled decode at the largest VAE size")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd UNets")
    p.add_argument("--fast", action="store_true",
                   help="also time pww_ldm.fast (inductor + weight freezing) against eager and diffusers")
    p.add_argument("--profile", action="store_true",
                   help="also profile one CFG step and one decode per operator class")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, here and in the worker processes (default: torch's)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("fp16" if cuda else "fp32")
    args.repeats = args.repeats or (2 if args.quick else 10 if cuda else 3)
    args.warmup = args.warmup or (1 if args.quick or not cuda else 3)
    args.vae_repeats = args.vae_repeats or args.repeats
    args.repeats_other = args.repeats_other or args.repeats
    args.steps = args.steps or (1 if args.quick else 20 if cuda else 2)
    # --quick: tiny models at a quarter of the sizes (latent 32 = 256 px), so CI stays < 60 s
    args.latent = 32 if args.quick else 64
    sizes = "128,256" if args.quick else "512,768,1024"
    args.sizes = [int(x) for x in (args.sizes or sizes).split(",")]
    vae_sizes = "128,256" if args.quick else "512,1024"
    args.vae_sizes = [int(x) for x in (args.vae_sizes or vae_sizes).split(",")]
    # malloc tuning concerns host memory only: the alloc section runs on the CPU by default
    optional = {"compile": args.compile, "fast": args.fast, "profile": args.profile, "alloc": not cuda}
    default = [s for s in SECTIONS if optional.get(s, True)]
    chosen = args.only.split(",") if args.only else default
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the tables, write the JSON; returns the exit code."""
    args = parse_args(argv)
    if args.threads:  # a fixed count: on a shared CPU, ratios at torch's default are noisier
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the fresh-process sections too
    tune_malloc()  # as the entry points do (importing pww_ldm leaves the allocator alone)
    torch.manual_seed(0)
    b = Bench(args)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in b.info.items()), flush=True)
    in_process = [s for s in IN_PROCESS if s in args.sections]
    if in_process:
        model, cfg = build_ours(args.quick, b.device, b.dtype)
        # the profile alone needs no diffusers models (and their ~4 GB of weights)
        dunet, dvae = (build_diffusers(model, cfg, b.device, b.dtype) if in_process != ["profile"]
                       else (None, None))
        ctx = {"model": model, "unet": model.model.diffusion_model, "dunet": dunet, "dvae": dvae,
               "inputs": unet_inputs(model, args.latent),
               "regions": region_context(model, args.latent * 8, args.latent * 8)}
        funcs = {"unet": section_unet, "kernels": section_kernels, "precision": section_precision,
                 "compile": section_compile, "vae": section_vae, "fast": section_fast,
                 "profile": section_profile}
        if "unet" not in args.sections and {"precision", "kernels"} & set(args.sections):
            baseline_step(b, ctx)  # the fp32/fp16 step those sections compare with
        for name in in_process:
            print(f"[{name}] {time.time() - b.started:.0f} s", flush=True)
            guarded(b, name, funcs[name], b, ctx)
        del ctx, model, dunet, dvae
        gc.collect()
        malloc_trim()
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
    for name, fn in (("txt2img", section_txt2img), ("alloc", section_alloc)):
        if name in args.sections:
            print(f"[{name}] {time.time() - b.started:.0f} s", flush=True)
            guarded(b, name, fn, b)
    b.save()
    title = "quick (tiny configs)" if args.quick else "full-size SD v1, random weights"
    print(f"\n## pww_ldm benchmark: {args.device} {args.dtype}, {title}\n")
    print(", ".join(f"{k}: {v}" for k, v in b.info.items()) + "\n")
    print(markdown_table(b.rows) + "\n")
    print(ratio_table(b.ratios) + "\n")
    if b.profile_markdown:
        print(f"### where the time goes (GEMM peak GFLOP/s: {b.info.get('gemm_peak_gflops')})\n")
        print(b.profile_markdown + "\n")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"total {time.time() - b.started:.0f} s; load average at the end {load}; JSON: {b.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
