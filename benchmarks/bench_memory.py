"""Peak memory of a whole image per size, pww_ldm against diffusers, in one run.

    python benchmarks/bench_memory.py [--sizes 512,768,1024] [--steps 1] [--out PATH]

Each (size, implementation) runs in a fresh process (bench_image_worker.py) with the same random
full-size SD v1 weights, both sides' models built and kept in every process (so both start from
the same resident memory and allocator state; --separate: each its own only): text encoding,
--steps Euler steps (CFG batch 2) and the decode (ours tiles from 1024 px, as its pipeline
does). One step is enough for the peak: a step's activations are freed before the next, and the
sampler's state is a few latents. Peak RSS is the
kernel's high-water mark over the run (VmHWM, reset at its start); the phase peaks are resident
memory sampled every 2 ms while the text encoder, the UNet or the VAE decoder runs. Both sides
tune glibc malloc as pww_ldm's entry points do (--malloc default: glibc's own settings, as
diffusers' users run it; tuned,default: both, and ours tuned against diffusers' default). Prints the
table with ratios; writes JSON (default benchmarks/results/memory_cpu.json) after each process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_image_worker import run_image_worker  # noqa: E402
from bench_util import machine_info, write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("text", "unet", "vae_decode")


def _row(label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """One table row: both peaks, their ratio, each side's growth above its start, phase peaks."""
    def phases(r: dict[str, Any]) -> str:
        return " / ".join(f"{r['phase_peak_mib'].get(p, float('nan')):.0f}" for p in PHASES)
    return (f"| {label} | {ours['rss_peak_mib'] / 1024:.2f} GiB | {theirs['rss_peak_mib'] / 1024:.2f} GiB "
            f"| {ours['rss_peak_mib'] / theirs['rss_peak_mib']:.3f} "
            f"| {ours['rss_peak_mib'] - ours['rss_start_mib']:.0f} MiB "
            f"| {theirs['rss_peak_mib'] - theirs['rss_start_mib']:.0f} MiB "
            f"| {phases(ours)} vs {phases(theirs)} |")


def markdown(results: dict[str, dict[str, Any]], sizes: list[int], steps: int,
             mallocs: list[str]) -> str:
    """Per size and malloc setting: both peaks, the ratio, the phases' peaks; with both settings
    also our tuned process against diffusers' with glibc's defaults (as each side's users run)."""
    lines = [f"| size ({steps} step + decode), malloc | pww_ldm peak RSS | diffusers peak RSS | ratio |"
             " pww_ldm above start | diffusers above start | phase peaks text / UNet / decode, "
             "ours vs diffusers (MiB) |", "|---|---:|---:|---:|---:|---:|---|"]
    pairs = [(m, m) for m in mallocs]
    if len(mallocs) == 2:
        pairs.append(("tuned", "default"))
    for size in sizes:
        for mine, other in pairs:
            ours, theirs = results.get(f"ours_{mine}_{size}"), results.get(f"diffusers_{other}_{size}")
            if ours and theirs:
                label = mine if mine == other else f"ours {mine}, diffusers {other}"
                lines.append(_row(f"{size} px, {label}", ours, theirs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ours and diffusers per size, print the table, write the JSON; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="512,768,1024")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    p.add_argument("--quick", action="store_true", help="tiny configs (a smoke run)")
    p.add_argument("--separate", action="store_true",
                   help="each process builds only its own side's models (the diffusers process "
                        "converts ours' then drops it): start states differ")
    p.add_argument("--malloc", default="tuned", choices=["tuned", "default", "tuned,default"],
                   help="both sides with pww_ldm's malloc tuning (compares the code), with glibc's "
                        "defaults (as diffusers' users run it), or both")
    p.add_argument("--out", default=str(RESULTS / "memory_cpu.json"))
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    mallocs = args.malloc.split(",")
    started = time.time()
    info = machine_info(__import__("torch").device("cpu"))
    results: dict[str, dict[str, Any]] = {}
    for size in sizes:
        for malloc, impl in itertools.product(mallocs, ("ours", "diffusers")):
            task = {"impl": impl, "precision": "fp32", "size": size, "steps": args.steps,
                    "repeats": 1, "quick": args.quick, "threads": args.threads,
                    "same_start": not args.separate, "tune_malloc": malloc == "tuned"}
            res = run_image_worker(task)
            results[f"{impl}_{malloc}_{size}"] = res
            print(f"{impl} ({malloc} malloc) {size}: peak {res['rss_peak_mib']:.0f} MiB "
                  f"(start {res['rss_start_mib']:.0f}), "
                  f"phases {res['phase_peak_mib']}, {res['times_s'][0]:.1f} s", flush=True)
            write_json_atomic(Path(args.out), {
                "command": "python benchmarks/bench_memory.py " + " ".join(argv or sys.argv[1:]),
                "machine": info, "steps": args.steps, "elapsed_s": round(time.time() - started, 1),
                "loadavg_end": list(os.getloadavg()), "results": results})
    print("\n" + markdown(results, sizes, args.steps, mallocs))
    print(f"\ntotal {time.time() - started:.0f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
