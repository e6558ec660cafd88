"""Command-line front ends shared by scripts/txt2img_pww.py and scripts/img2img_pww.py.

CompVis flag names (--prompt --ckpt --config --outdir --steps/--ddim_steps --scale --seed --H
--W --n_samples --n_iter --precision) plus the Paint-with-Words ones. Bad input prints one line
and exits 2: no traceback, no partial output file (images are written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from .allocator import tune_malloc
from .checkpoint import CheckpointError
from .config import ConfigError
from .images import ImageSizeError, image_grid, save_png
from .kernels import KERNELS, AttentionKernelError
from .region import RegionError, load_color_context
from .samplers.errors import SamplerInputError
from .samplers.registry import sampler_names

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "models" / "pww-demo"
DEMO_CKPT = DEMO_DIR / "model.safetensors"
SD_CKPT = REPO_ROOT / "models" / "ldm" / "stable-diffusion-v1" / "model.ckpt"
EXAMPLE_MAP = REPO_ROOT / "examples" / "cat_dog.png"
EXAMPLE_CONTEXT = REPO_ROOT / "examples" / "cat_dog.json"
EXAMPLE_PROMPT = "realistic photo of a dog, cat, tree, with beautiful sky, on sandy ground"
USER_ERRORS = (RegionError, CheckpointError, ConfigError, ImageSizeError, SamplerInputError,
               AttentionKernelError, FileNotFoundError, IsADirectoryError)


class UsageError(ValueError):
    """A bad combination of command-line arguments."""


def build_parser(img2img: bool) -> argparse.ArgumentParser:
    """The argument parser of txt2img (img2img=False) or img2img (True)."""
    p = argparse.ArgumentParser(
        description=("Paint-with-Words " + ("image-to-image" if img2img else "text-to-image")
                     + " for Stable Diffusion v1. With no --ckpt, the bundled demo model and "
                     "its example map run."))
    p.add_argument("--prompt", type=str, default=None, help="the prompt (default: the example's)")
    p.add_argument("--negative-prompt", "--negative_prompt", default="", help="negative prompt")
    p.add_argument("--ckpt", type=str, default=None,
                   help=f"SD v1 .ckpt/.safetensors (default: the bundled demo model, else {SD_CKPT})")
    p.add_argument("--config", type=str, default=None,
                   help="model config YAML (default: <ckpt>.yaml beside it, else SD v1)")
    p.add_argument("--outdir", type=str, default=None,
                   help="output folder (default outputs/txt2img-samples or outputs/img2img-samples)")
    p.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=30,
                   help="sampling steps")
    p.add_argument("--sampler", type=str, default="euler_a",
                   help="sampler: " + ", ".join(sampler_names("a1111")) + " (or snake_case)")
    p.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--eta", "--ddim_eta", dest="eta", type=float, default=None,
                   help="eta for DDIM and the ancestral/SDE samplers (default: sampler's own)")
    p.add_argument("--seed", type=int, default=42, help="seed; image i uses seed+i; -1 = random")
    p.add_argument("--H", type=int, default=None, help="height in px, a multiple of 8")
    p.add_argument("--W", type=int, default=None, help="width in px, a multiple of 8")
    p.add_argument("--n_samples", "--n-samples", dest="n_samples", type=int, default=1,
                   help="images per batch")
    p.add_argument("--n_iter", "--n-iter", dest="n_iter", type=int, default=1, help="batches")
    p.add_argument("--precision", choices=["autocast", "full", "fp32", "fp16", "bf16"],
                   default="autocast",
                   help="autocast = fp32 on CPU, fp16 on CUDA; full = fp32")
    p.add_argument("--device", type=str, default=None, help="cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--attention", choices=KERNELS, default="auto", help="attention kernel")
    p.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (slow first image, faster steps after)")
    p.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--color-map", type=str, default=None, help="painted colour map image")
    p.add_argument("--color-context", type=str, default=None,
                   help='regions: JSON/YAML file or inline string, e.g. \'{"#ff0000": "cat,1.0"}\'')
    p.add_argument("--no-pww", action="store_true", help="ignore the map: plain Stable Diffusion")
    p.add_argument("--weight-function", default="max", help="max, std or log2_std")
    p.add_argument("--weight-scale", type=float, default=None,
                   help="constant of the weight function (default: 0.1 for max, 1 otherwise)")
    p.add_argument("--resample", choices=["area", "bilinear"], default="area",
                   help="mask resampling to attention grids (bilinear = the reference)")
    p.add_argument("--lenient", action="store_true",
                   help="a context colour missing from the map is a warning, not an error")
    p.add_argument("--compare", action="store_true",
                   help="also write map | without PwW | with PwW side by side")
    p.add_argument("--skip_grid", "--skip-grid", dest="skip_grid", action="store_true",
                   help="do not write the grid image")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if img2img:
        p.add_argument("--init-img", "--init_img", dest="init_img", required=True,
                       help="the initial image")
        p.add_argument("--strength", type=float, default=0.6,
                       help="how much to change the init image, in (0, 1]")
    return p


def _demo_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The bundled demo model ships its own prompt, map and context in demo.json."""
    demo = json.loads((DEMO_DIR / "demo.json").read_text())
    return {"prompt": demo["prompt"], "color_map": str(DEMO_DIR / demo["color_map"]),
            "color_context": json.dumps(demo["color_context"]),
            "steps": demo.get("steps"), "scale": demo.get("scale"), "sampler": demo.get("sampler"),
            "weight_function": demo.get("weight_function"), "weight_scale": demo.get("weight_scale")}


def resolve_defaults(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Fill in the model, prompt, map and context the user left out."""
    given = set(a.split("=")[0] for a in argv if a.startswith("--"))
    if args.ckpt is None:
        if DEMO_CKPT.is_file():
            args.ckpt = str(DEMO_CKPT)
            args.compare = True if "--compare" not in given else args.compare
            demo = _demo_defaults(args)
            for key in ("prompt", "color_map", "color_context"):
                if getattr(args, key) is None:
                    setattr(args, key, demo[key])
            for key, flag in (("steps", "--steps"), ("scale", "--scale"), ("sampler", "--sampler"),
                              ("weight_function", "--weight-function"),
                              ("weight_scale", "--weight-scale")):
                if demo[key] is not None and flag not in given:
                    setattr(args, key, demo[key])
        else:
            args.ckpt = str(SD_CKPT)
    if args.prompt is None:
        args.prompt = EXAMPLE_PROMPT
        if args.color_map is None and args.color_context is None:
            args.color_map, args.color_context = str(EXAMPLE_MAP), str(EXAMPLE_CONTEXT)
    if (args.color_map is None) != (args.color_context is None) and not args.no_pww:
        raise UsageError("--color-map and --color-context go together: give both, or neither")
    return args


def _precision(args: argparse.Namespace) -> str | None:
    return {"autocast": None, "full": "fp32"}.get(args.precision, args.precision)


def run(args: argparse.Namespace, img2img: bool) -> list[Path]:
    """Load the model, generate n_iter batches, write numbered PNGs (+ grid, + comparison)."""
    import pww_ldm

    started = time.perf_counter()
    model = pww_ldm.load_model(args.ckpt, config=args.config, device=args.device,
                               dtype=_precision(args), use_ema=args.use_ema,
                               attention=args.attention, channels_last=args.channels_last,
                               compile=args.compile)
    color_map = None if args.no_pww or args.color_map is None else Image.open(args.color_map)
    context = None if color_map is None else load_color_context(args.color_context)
    init = Image.open(args.init_img) if img2img else None
    outdir = Path(args.outdir or ("outputs/img2img-samples" if img2img else "outputs/txt2img-samples"))
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    count = len(list(sample_dir.glob("*.png")))
    common = dict(steps=args.steps, guidance_scale=args.scale, sampler=args.sampler,
                  negative_prompt=args.negative_prompt, n_images=args.n_samples, eta=args.eta,
                  progress=not args.quiet, width=args.W, height=args.H)
    if img2img:
        common.update(init_image=init, strength=args.strength)
    seed = pww_ldm.pipeline.resolve_seed(args.seed)
    written, all_images = [], []
    for it in range(args.n_iter):
        batch_seed = seed + it * args.n_samples
        images = _generate(pww_ldm, model, args, color_map, context, batch_seed, common)
        for image in images:
            written.append(save_png(image, sample_dir / f"{count:05}.png"))
            count += 1
        all_images.extend(images)
        if args.compare and color_map is not None:
            same_size = dict(common, width=images[0].width, height=images[0].height)
            plain = _generate(pww_ldm, model, args, None, None, batch_seed, same_size)
            panels = [color_map.convert("RGB").resize(images[0].size, Image.NEAREST), plain[0], images[0]]
            written.append(save_png(image_grid(panels), outdir / f"compare-{count - 1:05}.png",
                                    images[0].info["parameters"]))
    if not args.skip_grid and len(all_images) > 1:
        grids = len(list(outdir.glob("grid-*.png")))
        written.append(save_png(image_grid(all_images, cols=args.n_samples),
                                outdir / f"grid-{grids:04}.png"))
    print(f"wrote {len(written)} file(s) to {outdir}/ in {time.perf_counter() - started:.1f} s")
    for path in written:
        print(f"  {path}")
    return written


def _generate(pww_ldm: Any, model: Any, args: argparse.Namespace, color_map: Image.Image | None,
              context: Any, seed: int, common: dict[str, Any]) -> list[Image.Image]:
    if color_map is None:
        kwargs = dict(common)
        kwargs["width"], kwargs["height"] = pww_ldm.pipeline.resolve_size(
            kwargs["width"], kwargs["height"], kwargs.get("init_image"))
        return pww_ldm.generate(model, args.prompt, seed=seed, **kwargs)
    return pww_ldm.paint_with_words(
        model, args.prompt, color_map, context, seed=seed, weight_function=args.weight_function,
        weight_scale=args.weight_scale, resample=args.resample, strict=not args.lenient, **common)


def main(argv: list[str] | None = None, img2img: bool = False) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    tune_malloc()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(img2img).parse_args(argv)
    try:
        run(resolve_defaults(args, argv), img2img)
    except (*USER_ERRORS, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
