"""Time to image: text encoding + sampling + decode, pww_ldm against diffusers, in one run.

    python benchmarks/bench_time_to_image.py [--size 512] [--steps 20] [--repeats 1]
        [--configs diffusers,exact,auto,...] [--threads N] [--out PATH]

Every configuration runs in a fresh process (bench_image_worker.py) holding the same random
full-size SD v1 weights: diffusers' UNet2DConditionModel + AutoencoderKL + transformers'
CLIPTextModel in a minimal Euler loop (bench_models.diffusers_txt2img), and pww_ldm's txt2img
(Euler, the same sigmas, CFG batch 2) as:
  exact   fp32 throughout
  auto    `--precision auto`: what pww_ldm.fast picks on this machine (UNet/text, VAE)
  fast    fp32 with `--fast` (inductor + weight freezing; its first image compiles for minutes,
          so it runs twice and the second is timed; not in the default set)
  <name>  each optional approximation registered in bench_image_worker.APPROXIMATIONS
The configurations run in turn, --repeats rounds of them (round-robin, so a busy period of a
shared machine spreads over all); the table gives medians, phases and the ratio to diffusers.
Writes JSON (default benchmarks/results/time_to_image_cpu.json) atomically after each image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_image_worker import APPROXIMATIONS, run_image_worker  # noqa: E402
from bench_util import machine_info, write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASE = {"diffusers": {"impl": "diffusers"}, "exact": {"impl": "ours", "precision": "fp32"},
        "auto": {"impl": "ours", "precision": "auto"},
        "fast": {"impl": "ours", "precision": "fp32", "fast": True}}


def config_tasks(names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: worker task fields} of the chosen configurations; ValueError names unknown ones."""
    known = {**BASE, **{n: {"impl": "ours", "precision": "fp32", "approximation": n}
                        for n in APPROXIMATIONS}}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; choose from {', '.join(known)}")
    return {n: known[n] for n in names}


def default_configs() -> list[str]:
    """diffusers, exact, auto and every registered approximation (fast costs minutes of compile)."""
    return ["diffusers", "exact", "auto", *APPROXIMATIONS]


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Table rows: median seconds (timed runs only), phases of the last run, ratio to diffusers."""
    medians = {n: statistics.median(t for r in rs for t in r["timed_s"]) for n, rs in results.items() if rs}
    ref = medians.get("diffusers")
    return [{"config": n, "median_s": m, "runs": sum(len(r["timed_s"]) for r in results[n]),
             "ratio_vs_diffusers": m / ref if ref else None,
             "phases_s": results[n][-1]["phases_s"][-1], "note": results[n][-1]["note"]}
            for n, m in medians.items()]


def markdown(rows: list[dict[str, Any]], size: int, steps: int) -> str:
    """The rows as the README's markdown table."""
    lines = [f"| {size} px, {steps} Euler steps, CFG | time to image | x diffusers | text / UNet / decode s |"
             " note |", "|---|---:|---:|---|---|"]
    for r in rows:
        p = r["phases_s"]
        phases = " / ".join(f"{p.get(k, float('nan')):.1f}" for k in ("text", "unet", "vae_decode"))
        ratio = "" if r["ratio_vs_diffusers"] is None else f"{r['ratio_vs_diffusers']:.3f}"
        lines.append(f"| {r['config']} | {r['median_s']:.1f} s | {ratio} | {phases} | {r['note']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1, help="rounds over the configurations")
    p.add_argument("--configs", default=None, help="comma-separated (default: all but fast)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    p.add_argument("--quick", action="store_true", help="tiny configs (a smoke run)")
    p.add_argument("--out", default=str(RESULTS / "time_to_image_cpu.json"))
    args = p.parse_args(argv)
    try:
        args.tasks = config_tasks(args.configs.split(",") if args.configs else default_configs())
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON; returns the exit code."""
    args = parse_args(argv)
    started = time.time()
    info = machine_info(__import__("torch").device("cpu"))
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in args.tasks}
    for round_ in range(args.repeats):
        for name, fields in args.tasks.items():
            fast = bool(fields.get("fast"))  # the first fast image compiles: time the second
            task = {**fields, "size": args.size, "steps": args.steps, "quick": args.quick,
                    "threads": args.threads, "repeats": 2 if fast else 1}
            res = run_image_worker(task)
            res["timed_s"] = res["times_s"][1:] if fast else res["times_s"]
            results[name].append(res)
            print(f"round {round_ + 1} {name}: {res['times_s']} s, phases {res['phases_s'][-1]}, "
                  f"load {res['loadavg'][0]:.2f}", flush=True)
            write_json_atomic(Path(args.out), {  # after every image: a long run keeps what it did
                "command": "python benchmarks/bench_time_to_image.py " + " ".join(argv or sys.argv[1:]),
                "machine": info, "size": args.size, "steps": args.steps, "rounds_started": round_ + 1,
                "elapsed_s": round(time.time() - started, 1), "loadavg_end": list(os.getloadavg()),
                "rows": summarise(results), "runs": results})
    print("\n" + markdown(summarise(results), args.size, args.steps))
    print(f"\ntotal {time.time() - started:.0f} s; load at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
