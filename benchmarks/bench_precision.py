"""The evidence behind `--precision auto`: does bf16 keep the demo image and the region benchmark?

    python benchmarks/bench_precision.py [--n 12] [--threads 2] [--out PATH]

On the bundled demo model (CPU), against fp32 (the reference):
  unet_bf16  the UNet and text encoder in bf16, the VAE in fp32 (what `--precision bf16` loads)
  vae_bf16   the VAE alone in bf16: fp32's latents decoded by a bf16 copy of the VAE
  all_bf16   both: bf16's latents decoded by the bf16 VAE
For each: PSNR of the demo image (demo.json's scene, seed 42, as `python scripts/txt2img_pww.py`
draws it) against fp32's, and the region benchmark (pww_ldm.train.eval_regions.evaluate, --n
layouts, the conditions below) with each condition's mean IoU and its change from fp32. The VAE
does not take part in sampling, so the benchmark samples twice (fp32, bf16) and the bf16 VAE
re-decodes the latents each run decoded, scored as the benchmark scores. pww_ldm.fast's
criterion (PSNR >= 35 dB and |dIoU| < 0.02 on every condition) is applied to the numbers, and the
JSON (default benchmarks/results/precision_auto_cpu.json) is what pww_ldm.fast cites.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

RESULTS = Path(__file__).resolve().parent / "results" / "precision_auto_cpu.json"
# Plain SD, both weight functions, the negative outside weight and the region features: the
# paths bf16 could move differently (the full list of 20 conditions takes ~3x longer).
CONDITIONS = ("no PwW", "max x0.8", "std x8", "std x8, outside -1", "std x8, self 0.3",
              "std x8, dense cross 1")
SEED, SIZE = 1234, 128  # the region benchmark's defaults (pww_ldm.train.eval_regions.evaluate)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def demo_latents(model: Any) -> Any:
    """The demo scene's sampled latents (1, 4, 64, 64) in float32, as the CLI's defaults draw them."""
    from PIL import Image

    import pww_ldm
    from pww_ldm.paths import DEMO_DIR

    demo = json.loads((DEMO_DIR / "demo.json").read_text())
    color_map = Image.open(DEMO_DIR / demo["color_map"])
    return pww_ldm.paint_with_words(
        model, demo["prompt"], color_map, demo["color_context"], seed=42, steps=demo["steps"],
        guidance_scale=demo["scale"], sampler=demo["sampler"], progress=False,
        weight_function=demo["weight_function"], weight_scale=demo["weight_scale"],
        return_latents=True).float()


def image_of(model: Any, latents: Any) -> np.ndarray:
    """(H, W, 3) uint8: the latents decoded by the model's VAE, as the pipeline saves them."""
    from pww_ldm.images import to_pil
    from pww_ldm.vae import decode_latents

    return np.asarray(to_pil(decode_latents(model, latents))[0])


class CapturedDecodes:
    """Inside `with`: every latent the pipeline decodes is kept, in order (the region benchmark
    generates layout by layout, condition by condition, one image each)."""

    def __enter__(self) -> list[Any]:
        import pww_ldm.pipeline

        self.original = pww_ldm.pipeline.decode_latents
        self.latents: list[Any] = []

        def keep(model: Any, latents: Any, *args: Any, **kwargs: Any) -> Any:
            self.latents.append(latents.detach().float().clone())
            return self.original(model, latents, *args, **kwargs)

        pww_ldm.pipeline.decode_latents = keep
        return self.latents

    def __exit__(self, *exc: Any) -> None:
        import pww_ldm.pipeline

        pww_ldm.pipeline.decode_latents = self.original


def region_ious(model: Any, n: int, conditions: tuple[str, ...]) -> tuple[dict[str, float], list[Any]]:
    """({condition: mean IoU} of the region benchmark's first n training-like layouts, the
    latents it decoded)."""
    from pww_ldm.train.eval_regions import default_conditions, evaluate

    chosen = [c for c in default_conditions() if c.name in conditions]
    with CapturedDecodes() as latents:
        done, _ = evaluate(model, n_layouts=n, conditions=chosen, n_examples=0,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    return {c.name: c.summary()["iou"] for c in done}, latents


def rescored_ious(vae_model: Any, latents: list[Any], conditions: tuple[str, ...]) -> dict[str, float]:
    """{condition: mean IoU} of the benchmark's latents decoded by `vae_model`'s VAE and scored
    as pww_ldm.train.eval_regions.evaluate scores (layout i, condition k = latents[i * K + k])."""
    from PIL import Image

    from pww_ldm.train.eval_regions import COLORS, color_map, family_layout, score_object, segment

    names = [c for c in default_order() if c in conditions]
    ious: dict[str, list[float]] = {c: [] for c in names}
    for index, z in enumerate(latents):
        i, k = divmod(index, len(names))
        layout, _ = family_layout("train", i, SEED, SIZE)
        _, _, masks = color_map(layout, SIZE)
        image = Image.fromarray(image_of(vae_model, z))
        for obj, mask in zip(layout.objects, masks, strict=True):
            ious[names[k]].append(score_object(segment(image, COLORS[obj.color]), mask)["iou"])
    return {c: float(np.mean(v)) for c, v in ious.items()}


def default_order() -> list[str]:
    """The benchmark's condition names in its order (the order it generates them)."""
    from pww_ldm.train.eval_regions import default_conditions

    return [c.name for c in default_conditions()]


def with_vae(model: Any, dtype: Any) -> Any:
    """A shallow copy of `model` whose VAE is a copy in `dtype` (the UNet and text encoder shared)."""
    import copy

    other = copy.copy(model)
    other._modules = dict(model._modules)
    other._modules["first_stage_model"] = copy.deepcopy(model.first_stage_model).to(dtype)
    return other


def compare(ref: dict[str, Any], psnr_db: float, ious: dict[str, float]) -> dict[str, Any]:
    """PSNR, IoU changes against the fp32 reference, and the criterion's verdict."""
    from pww_ldm.fast import precision_passes

    d_iou = {k: v - ref["iou"][k] for k, v in ious.items()}
    worst = max(abs(v) for v in d_iou.values())
    return {"psnr_db": psnr_db, "iou": ious, "d_iou": d_iou, "max_abs_d_iou": worst,
            "passes": precision_passes(psnr_db, worst)}


def measure(n: int, conditions: tuple[str, ...]) -> dict[str, Any]:
    """fp32, the UNet + text encoder in bf16, and the VAE in bf16 (on fp32's latents, and on
    bf16's): the demo image's PSNR and the region benchmark's IoU change against fp32."""
    import torch

    import pww_ldm
    from pww_ldm.paths import DEMO_CKPT

    out: dict[str, Any] = {}
    for dtype in ("fp32", "bf16"):
        start = time.time()
        model = pww_ldm.load_model(DEMO_CKPT, device="cpu", dtype=dtype)
        bf16_vae = with_vae(model, torch.bfloat16)
        latents = demo_latents(model)
        image, image_vae = image_of(model, latents), image_of(bf16_vae, latents)
        ious, decoded = region_ious(model, n, conditions)
        rescored = rescored_ious(model, decoded, conditions)  # a check: equals `ious`
        ious_vae = rescored_ious(bf16_vae, decoded, conditions)
        if dtype == "fp32":
            ref = {"image": image, "iou": ious}
            out["fp32"] = {"iou": ious, "rescored_iou": rescored}
            out["vae_bf16"] = {"on": "fp32 latents", **compare(ref, psnr(image_vae, image), ious_vae)}
        else:
            out["unet_bf16"] = {"vae": "fp32", **compare(ref, psnr(image, ref["image"]), ious),
                                "rescored_iou": rescored}
            out["all_bf16"] = compare(ref, psnr(image_vae, ref["image"]), ious_vae)
        print(f"{dtype} done in {time.time() - start:.0f} s: "
              + json.dumps({k: v for k, v in out.items()}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the JSON atomically."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=12, help="region benchmark layouts per configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    from bench_util import write_json_atomic

    from pww_ldm.allocator import tune_malloc
    from pww_ldm.threads import set_threads

    tune_malloc()
    set_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()]
    configs = measure(args.n, CONDITIONS)
    data = {"command": "python benchmarks/bench_precision.py " + " ".join(argv or sys.argv[1:]),
            "settings": {"layouts": args.n, "conditions": list(CONDITIONS), "threads": args.threads,
                         "demo_seed": 42},
            "loadavg_start": load, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "configs": configs}
    write_json_atomic(Path(args.out), data)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
