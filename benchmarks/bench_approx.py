"""What the optional approximations (pww_ldm.approx: ToMe, DeepCache) buy, and what they cost.

    python benchmarks/bench_approx.py [--device cpu|cuda] [--repeats 3] [--steps 20]
        [--threads N] [--quick] [--only speed,quality] [--out PATH]

speed    the full-size SD v1 UNet with random weights, one CFG step at 64x64 latent (512 px,
         batch 2 = [uncond; cond]), PwW off and on (5 regions): the exact step, the ToMe step
         (every UNet call merges), and DeepCache's cached step (input blocks 0..branch and their
         output blocks on a kept feature), with and without ToMe; the cases interleaved round by
         round, medians of --repeats. A --steps txt2img loop is one UNet call per step (Euler a),
         so its time is composed from the medians: DeepCache N runs ceil(steps / N) full calls
         (exact, or ToMe steps with ToMe on) and the rest cached.
quality  the demo model's demo.json scene (seed 42, as `python scripts/txt2img_pww.py` draws it;
         its sampler Euler a, and deterministic Euler) with each approximation against the exact
         image of the same sampler: PSNR and SSIM (Wang et al. 2004:
         11x11 Gaussian window, sigma 1.5, per RGB channel, mean), and the scene's mean object IoU.
Prints markdown tables; writes JSON (default benchmarks/results/approx_<device>.json) atomically.
The region benchmark's IoU with each approximation is scripts/eval_regions.py's conditions
"std x8, tome 0.5", "std x8, deepcache 2", ... (benchmarks/results/eval_regions_approx.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_models import build_ours, region_context, unet_inputs  # noqa: E402
from bench_util import machine_info, sync, write_json_atomic  # noqa: E402

from pww_ldm.allocator import tune_malloc  # noqa: E402
from pww_ldm.approx import Approximations, ApproxRun  # noqa: E402
from pww_ldm.conditioning import UNetContext  # noqa: E402
from pww_ldm.region import PaintWithWords  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOME = 0.5
BRANCH = 1
# the settings of the quality rows and of the composed loops: (name, Approximations)
SETTINGS = (("ToMe 0.5", Approximations(tome=TOME)),
            ("DeepCache 2", Approximations(deepcache=2, deepcache_branch=BRANCH)),
            ("DeepCache 3", Approximations(deepcache=3, deepcache_branch=BRANCH)),
            ("DeepCache 3, branch 3", Approximations(deepcache=3, deepcache_branch=3)),
            ("ToMe 0.5 + DeepCache 3", Approximations(tome=TOME, deepcache=3, deepcache_branch=BRANCH)))
NEVER = 10 ** 9  # a refresh interval no timing reaches: every call after the first is cached


def cached_name(settings: Approximations) -> str:
    """The case name of a setting's cached call."""
    return f"cached step, branch {settings.deepcache_branch}" + (" + ToMe" if settings.tome else "")


def step_cases(unet: torch.nn.Module, inputs: dict[str, torch.Tensor], plugins: tuple
               ) -> dict[str, Callable[[], Any]]:
    """The timed UNet calls of one PwW setting: exact, ToMe, and the cached calls SETTINGS use."""
    def call(run: ApproxRun | None) -> Any:
        context = UNetContext(inputs["emb"], inputs["sigma"], plugins, cond_rows=slice(1, 2),
                              approx=run)
        return unet(inputs["x"], inputs["t"], context=context)

    def cached(settings: Approximations) -> Callable[[], Any]:
        run = ApproxRun(Approximations(tome=settings.tome, deepcache=NEVER,
                                       deepcache_branch=settings.deepcache_branch))
        with torch.inference_mode():
            call(run)  # the full call that keeps the deep feature
        return lambda: call(run)

    cases = {"exact": lambda: call(None),
             "ToMe step": lambda: call(ApproxRun(Approximations(tome=TOME)))}
    cases.update({cached_name(st): cached(st) for _, st in SETTINGS if st.deepcache > 1})
    return cases


def time_interleaved(cases: dict[str, Callable[[], Any]], device: torch.device, repeats: int
                     ) -> dict[str, list[float]]:
    """One untimed call of each case, then `repeats` rounds timing every case once per round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for r in range(repeats):
            for name, fn in cases.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}/{repeats}: " + ", ".join(
                f"{n} {t[-1]:.3f} s" for n, t in times.items()), flush=True)
    return times


def composed_loop(median: dict[str, float], settings: Approximations, steps: int, prefix: str
                  ) -> float:
    """Seconds of a `steps`-call sampling loop under `settings`, from the per-call medians."""
    full = median[prefix + ("ToMe step" if settings.tome else "exact")]
    if settings.deepcache <= 1:
        return steps * full
    n_full = math.ceil(steps / settings.deepcache)  # calls 0, N, 2N, ... refresh
    cached = median[prefix + cached_name(settings)]
    return n_full * full + (steps - n_full) * cached


def section_speed(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per-call medians (PwW off and on) and the composed loops' speed-ups over exact."""
    model, _ = build_ours(args.quick, device, torch.float32)
    unet = model.model.diffusion_model
    latent = 16 if args.quick else 64
    inputs = unet_inputs(model, latent)
    regions = region_context(model, latent * 8, latent * 8)
    cases = {}
    for prefix, plugins in (("", ()), ("PwW on, ", (PaintWithWords(regions),))):
        cases.update({prefix + k: v for k, v in step_cases(unet, inputs, plugins).items()})
    times = time_interleaved(cases, device, args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    loops = []
    for prefix in ("", "PwW on, "):
        exact = args.steps * median[prefix + "exact"]
        for name, settings in SETTINGS:
            seconds = composed_loop(median, settings, args.steps, prefix)
            loops.append({"pww": bool(prefix), "approximation": name, "seconds": seconds,
                          "exact_seconds": exact, "speedup": exact / seconds})
    return {"latent": latent, "steps": args.steps, "times_s": times, "median_s": median,
            "loops": loops}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two (H, W, 3) uint8 images (module doc), valid window positions only."""
    x, y = (torch.from_numpy(v.astype(np.float64)).permute(2, 0, 1)[:, None] for v in (a, b))
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def section_quality(args: argparse.Namespace) -> dict[str, Any]:
    """The demo scene with each approximation against the exact image of the same sampler (the
    demo's own, Euler a, then the others of --samplers), and the scene's mean object IoU."""
    from PIL import Image

    import pww_ldm
    from pww_ldm.paths import DEMO_CKPT, DEMO_DIR
    from pww_ldm.train.eval_regions import score_object, segment

    demo = json.loads((DEMO_DIR / "demo.json").read_text())
    color_map = Image.open(DEMO_DIR / demo["color_map"]).convert("RGB")
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in demo["color_context"]]
    model = pww_ldm.load_model(DEMO_CKPT)

    def image(approx: Approximations | None, sampler: str) -> tuple[np.ndarray, float, float]:
        start = time.perf_counter()
        out = pww_ldm.paint_with_words(
            model, demo["prompt"], color_map, demo["color_context"], seed=42, steps=demo["steps"],
            guidance_scale=demo["scale"], sampler=sampler, progress=False, approx=approx,
            weight_function=demo["weight_function"], weight_scale=demo["weight_scale"])[0]
        seconds = time.perf_counter() - start
        ious = [score_object(segment(out, rgb), (np.asarray(color_map) == rgb).all(-1))["iou"]
                for rgb in colours]
        return np.asarray(out), float(np.mean(ious)), seconds

    rows = []
    for sampler in args.samplers.split(","):
        exact, iou, seconds = image(None, sampler)
        rows.append({"sampler": sampler, "approximation": "exact", "psnr_db": float("inf"),
                     "ssim": 1.0, "scene_iou": iou, "seconds": seconds})
        for name, settings in SETTINGS:
            approx, iou, seconds = image(settings, sampler)
            rows.append({"sampler": sampler, "approximation": name, "psnr_db": psnr(approx, exact),
                         "ssim": ssim(approx, exact), "scene_iou": iou, "seconds": seconds})
            print(f"  {rows[-1]}", flush=True)
    return {"scene": "models/pww-demo/demo.json, seed 42", "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The tables of the sections that ran."""
    lines = []
    speed = result.get("speed")
    if speed:
        lines += [f"| UNet call ({speed['latent']}x{speed['latent']} latent, CFG batch 2) | median s |",
                  "|---|---:|"]
        lines += [f"| {name} | {t:.3f} |" for name, t in speed["median_s"].items()]
        lines += ["", f"| {speed['steps']}-step loop | PwW | seconds | exact | speed-up |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {r['approximation']} | {'on' if r['pww'] else 'off'} | {r['seconds']:.1f} | "
                  f"{r['exact_seconds']:.1f} | {r['speedup']:.2f}x |" for r in speed["loops"]]
    quality = result.get("quality")
    if quality:
        lines += ["", f"| demo image ({quality['scene']}) | sampler | PSNR dB | SSIM | scene IoU | s |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['approximation']} | {r['sampler']} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | "
                  f"{r['scene_iou']:.3f} | {r['seconds']:.1f} |" for r in quality["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the tables, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the speed section")
    p.add_argument("--steps", type=int, default=20, help="steps of the composed txt2img loop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    p.add_argument("--samplers", default="euler_a,euler",
                   help="samplers of the quality section (demo.json's is euler_a)")
    p.add_argument("--quick", action="store_true", help="tiny UNet at 128 px (a smoke run)")
    p.add_argument("--only", default="speed,quality", help="comma-separated: speed, quality")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/approx_<device>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    device = torch.device(args.device)
    sections = set(args.only.split(","))
    if sections - {"speed", "quality"}:
        p.error(f"unknown section(s) {sorted(sections - {'speed', 'quality'})}; use speed, quality")
    suffix = "_quick" if args.quick else ""
    path = Path(args.out) if args.out else RESULTS / f"approx_{device.type}{suffix}.json"
    result: dict[str, Any] = {"machine": machine_info(device), "args": vars(args),
                              "uptime_at_start": _uptime()}
    started = time.time()
    if "speed" in sections:
        result["speed"] = section_speed(args, device)
        write_json_atomic(path, result)
    if "quality" in sections:
        result["quality"] = section_quality(args)
    result.update(uptime_at_end=_uptime(), elapsed_s=time.time() - started)
    write_json_atomic(path, result)
    print("\n" + markdown(result))
    print(f"\nload at start / end: {result['uptime_at_start']} / {result['uptime_at_end']}; JSON: {path}")
    return 0


def _uptime() -> str:
    """`uptime`'s load averages (the CPU is shared with other work)."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
