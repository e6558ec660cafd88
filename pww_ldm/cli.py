"""Command-line front ends shared by scripts/txt2img_pww.py and scripts/img2img_pww.py.

CompVis flag names (--prompt --ckpt --config --outdir --steps/--ddim_steps --scale --seed --H
--W --n_samples --n_iter --precision) plus the Paint-with-Words ones. Bad input prints one line
and exits 2. Every check that does not need the model (files, colour context, labels against
the prompt's tokens, colours, size, sampler, numbers) runs before the checkpoint loads, and
nothing is written, not even a folder, before the first image is ready.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from . import paths
from .allocator import tune_malloc
from .approx import Approximations
from .cli_text import add_text_flags, check_text, positive_int, prepare_text
from .heatmaps import attention_report
from .hires import add_hires_flags, hires_fix, hires_options
from .images import check_size, image_grid, save_png
from .kernels import KERNELS
from .models.tokenizer import get_tokenizer
from .pipeline import resolve_seed, resolve_size
from .region import LabelNotInPromptError, RegionContext, load_color_context
from .region.features import FeatureOptions
from .region.region_prompts import BIAS_TOKENS, COVERS, DEFAULT_BIAS_TOKENS, DEFAULT_COVER
from .samplers.registry import get_sampler, sampler_names
from .threads import set_threads
from .user_errors import USER_ERRORS, UsageError, open_image

__all__ = ["UsageError", "build_parser", "check_inputs", "main", "resolve_defaults", "run"]

# What a flag left out means (the parser's defaults are None, so "not given" is visible); with
# the bundled demo model, its demo.json comes first.
DEFAULTS: dict[str, Any] = {"steps": 30, "scale": 7.5, "sampler": "euler_a",
                            "weight_function": "max", "compare": False}
DEMO_SETTINGS = ("steps", "scale", "sampler", "weight_function", "weight_scale")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=str, default=None,
                   help="SD v1 .ckpt/.safetensors (default: the bundled demo model, else "
                        f"{paths.SD_CKPT})")
    p.add_argument("--config", type=str, default=None,
                   help="model config YAML (default: <ckpt>.yaml beside it, else SD v1)")
    p.add_argument("--precision", choices=["autocast", "auto", "full", "fp32", "fp16", "bf16"],
                   default="autocast", help="autocast = fp32 on CPU, fp16 on CUDA; full = fp32; "
                                            "auto = bf16 on CPUs with native bf16, else autocast")
    p.add_argument("--device", type=str, default=None, help="cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); on a CPU "
                        "shared with other work fewer is often faster, e.g. --threads 1")
    p.add_argument("--attention", choices=KERNELS, default="auto", help="attention kernel")
    p.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (slow first image, faster steps after)")
    p.add_argument("--fast", action="store_true",
                   help="UNet compiled with weight freezing (pww_ldm.fast): minutes of compiling "
                        "at the first image of each size")
    p.add_argument("--tome", type=float, default=0.0, metavar="RATIO",
                   help="approximate: token merging (ToMe for SD) in the self-attention of the "
                        "finest UNet level, merging RATIO of its tokens, e.g. 0.5 (default 0 = off)")
    p.add_argument("--deepcache", type=int, default=0, metavar="N",
                   help="approximate: DeepCache, the whole UNet every N-th call and only its shallow "
                        "blocks on the cached deep feature in between, e.g. 3 (default 0 = off)")
    p.add_argument("--deepcache-branch", type=int, default=1, metavar="B",
                   help="DeepCache's shallow part: input blocks 0..B and their output blocks "
                        "(default 1; larger = more of the UNet on every call, slower and closer)")
    p.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--vae", type=str, default=None,
                   help="a separate VAE (.vae.pt, .vae.safetensors, or a whole-model .ckpt)")
    p.add_argument("--v-pred", action="store_true",
                   help="the checkpoint is v-prediction (SD 2.x 768-v) whatever its config says")
    add_text_flags(p)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", type=str, default=None, help="the prompt (default: the example's)")
    p.add_argument("--negative-prompt", "--negative_prompt", default="", help="negative prompt")
    p.add_argument("--outdir", type=str, default=None,
                   help="output folder (default outputs/txt2img-samples or outputs/img2img-samples)")
    p.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=None,
                   help="sampling steps (default 30, or the demo model's)")
    p.add_argument("--sampler", type=str, default=None,
                   help="sampler (default euler_a): " + ", ".join(sampler_names("a1111"))
                        + " (or snake_case)")
    p.add_argument("--scale", type=float, default=None,
                   help="classifier-free guidance scale (default 7.5, or the demo model's)")
    p.add_argument("--eta", "--ddim_eta", dest="eta", type=float, default=None,
                   help="eta for DDIM and the ancestral/SDE samplers (default: sampler's own)")
    p.add_argument("--seed", type=int, default=42, help="seed; image i uses seed+i; -1 = random")
    p.add_argument("--H", type=int, default=None, help="height in px, a multiple of 8")
    p.add_argument("--W", type=int, default=None, help="width in px, a multiple of 8")
    p.add_argument("--n_samples", "--n-samples", dest="n_samples", type=int, default=1,
                   help="images per batch")
    p.add_argument("--n_iter", "--n-iter", dest="n_iter", type=int, default=1, help="batches")
    p.add_argument("--skip_grid", "--skip-grid", dest="skip_grid", action="store_true",
                   help="do not write the grid image")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_region_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color-map", type=str, default=None, help="painted colour map image")
    p.add_argument("--color-context", type=str, default=None,
                   help='regions: JSON/YAML file or inline string, e.g. \'{"#ff0000": "cat,1.0"}\'')
    p.add_argument("--no-pww", action="store_true", help="ignore the map: plain Stable Diffusion")
    p.add_argument("--weight-function", default=None,
                   help="max (default), std or log2_std (the demo model uses its own)")
    p.add_argument("--weight-scale", type=float, default=None,
                   help="constant of the weight function (default: 0.1 for max, 1 otherwise)")
    p.add_argument("--resample", choices=["area", "bilinear"], default="area",
                   help="mask resampling to attention grids (bilinear = the reference, exactly "
                        "at sizes that are multiples of 64)")
    p.add_argument("--attention-maps", action="store_true",
                   help="also write one attention heatmap PNG per label (outlined region) and a "
                        "grid to <outdir>/attention/, and print each label's attention score")
    p.add_argument("--self-attention", type=float, default=0.0,
                   help="DenseDiffusion self-attention modulation weight (paper: 0.3; 0 = off)")
    p.add_argument("--dense-cross", type=float, default=0.0,
                   help="DenseDiffusion cross-attention modulation weight (paper: 1.0; 0 = off)")
    p.add_argument("--attention-guidance", type=float, default=0.0, metavar="STEP",
                   help="attention guidance (Chen et al. 2024): in the first 30 %% of the steps "
                        "move the latent STEP noise std down the gradient of each label's "
                        "attention outside its region (0 = off; no gain on the demo model)")
    p.add_argument("--base-ratio", type=float, default=1.0,
                   help="the prompt's share of attention inside regions that have their own "
                        "\"prompt\" (1 = unchanged; 0 = only the region's prompt there)")
    p.add_argument("--region-cover", default=DEFAULT_COVER, metavar="{touch,area}",
                   help="how a region with its own \"prompt\" reaches an attention cell: touch = "
                        "every cell it covers over 5 %% of (default; draws small and thin shapes "
                        "far more often), area = its share of the cell's pixels")
    p.add_argument("--region-bias-tokens", default=DEFAULT_BIAS_TOKENS,
                   metavar="{" + ",".join(BIAS_TOKENS) + "}",
                   help="which tokens of a region's own \"prompt\" get the Paint-with-Words bias: its "
                        "words, its words and its end-of-text token, or the end-of-text token alone "
                        f"(default {DEFAULT_BIAS_TOKENS})")
    p.add_argument("--lenient", action="store_true",
                   help="a context colour missing from the map is a warning, not an error")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="also write map | without PwW | with PwW side by side (default: on for "
                        "the demo model only)")


def build_parser(img2img: bool) -> argparse.ArgumentParser:
    """The argument parser of txt2img (img2img=False) or img2img (True).

    Flags that have a demo-model value parse to None when not given; `resolve_defaults` fills
    them in.
    """
    p = argparse.ArgumentParser(
        description=("Paint-with-Words " + ("image-to-image" if img2img else "text-to-image")
                     + " for Stable Diffusion v1. With no --ckpt, the bundled demo model and "
                     "its example map run. Bad input: one line `error: ...`, exit status 2."))
    _add_sampling_flags(p)
    _add_model_flags(p)
    _add_region_flags(p)
    if not img2img:
        add_hires_flags(p)
    if img2img:
        p.add_argument("--init-img", "--init_img", dest="init_img", required=True,
                       help="the initial image")
        p.add_argument("--strength", type=float, default=0.6,
                       help="how much to change the init image, in (0, 1]")
    return p


def _apply_demo(args: argparse.Namespace) -> None:
    """The bundled demo model ships its own prompt, map, context and settings in demo.json."""
    demo = json.loads((paths.DEMO_DIR / "demo.json").read_text())
    if args.prompt is None:
        args.prompt = demo["prompt"]
    if args.color_map is None:
        args.color_map = str(paths.DEMO_DIR / demo["color_map"])
    if args.color_context is None:
        args.color_context = json.dumps(demo["color_context"])
    if args.compare is None:
        args.compare = True
    for key in DEMO_SETTINGS:
        if getattr(args, key) is None and demo.get(key) is not None:
            setattr(args, key, demo[key])


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in what the user left out: with no --ckpt and the demo model present, demo.json's
    prompt, map, context and settings; then the usual defaults (DEFAULTS, the example prompt and
    map). The checkpoint must exist (CheckpointNotFoundError saying what to pass otherwise)."""
    if args.ckpt is None and paths.DEMO_CKPT.is_file():
        _apply_demo(args)
    args.ckpt = paths.resolve_checkpoint(args.ckpt)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.prompt is None:
        args.prompt = paths.EXAMPLE_PROMPT
        if args.color_map is None and args.color_context is None:
            args.color_map, args.color_context = str(paths.EXAMPLE_MAP), str(paths.EXAMPLE_CONTEXT)
    if (args.color_map is None) != (args.color_context is None) and not args.no_pww:
        raise UsageError("--color-map and --color-context go together: give both, or neither")
    return args


@dataclass(frozen=True)
class Inputs:
    """The decoded inputs of a run, checked. regions: the parsed colour context (None: no PwW)."""

    color_map: Image.Image | None
    regions: list | None
    init_image: Image.Image | None
    width: int
    height: int
    approx: Approximations | None = None


def _check_numbers(args: argparse.Namespace, img2img: bool) -> None:
    for flag, value in (("--steps", args.steps), ("--n_samples", args.n_samples),
                        ("--n_iter", args.n_iter)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if img2img and not 0.0 < args.strength <= 1.0:
        raise UsageError(f"--strength must be in (0, 1] (0 keeps the init image, 1 ignores it), "
                         f"got {args.strength}")
    for flag, value in (("--self-attention", args.self_attention),
                        ("--dense-cross", args.dense_cross),
                        ("--attention-guidance", args.attention_guidance)):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0 (0 = off), got {value}")
    if not 0.0 <= args.base_ratio <= 1.0:
        raise UsageError(f"--base-ratio must be in [0, 1] (1 = unchanged), got {args.base_ratio}")
    if args.region_cover not in COVERS:
        raise UsageError(f"--region-cover must be one of {', '.join(COVERS)}, got {args.region_cover!r}")
    if args.region_bias_tokens not in BIAS_TOKENS:
        raise UsageError(f"--region-bias-tokens must be one of {', '.join(BIAS_TOKENS)}, "
                         f"got {args.region_bias_tokens!r}")
    get_sampler(args.sampler)  # UnknownSamplerError listing the valid names
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"config {args.config} does not exist: pass --config with a model "
                                "YAML, or leave it out")


def check_inputs(args: argparse.Namespace, img2img: bool) -> Inputs:
    """Every check that needs no model, done before it loads: numbers, sampler, config file,
    images readable, size, colour context parsed, labels found in the prompt's tokens, colours
    present in the map, weight function. Raises one of USER_ERRORS.

    Labels are aligned with the bundled CLIP tokenizer, the one every SD v1 text encoder here
    uses; the pipeline aligns again with the loaded model's own tokenizer, so a model with
    another tokenizer still gets its labels checked (after the load).
    """
    _check_numbers(args, img2img)
    approx = approximations(args)
    hires_options(args)  # --hr-* checked before the model loads
    embeddings = check_text(args)
    init = open_image(args.init_img, "init image") if img2img else None
    use_map = not args.no_pww and args.color_map is not None
    color_map = open_image(args.color_map, "colour map") if use_map else None
    width, height = resolve_size(args.W, args.H, color_map or init)
    check_size(width, height)
    regions = None
    if color_map is not None:
        regions = load_color_context(args.color_context)
        with warnings.catch_warnings():  # --lenient's warnings come once, from the pipeline
            warnings.simplefilter("ignore")
            try:
                labelled = [r for r in regions if r.label]  # own-prompt regions need no label
                RegionContext.build(args.prompt, color_map, labelled, width=width, height=height,
                                    tokenizer=get_tokenizer(), weight_function=args.weight_function,
                                    weight_scale=args.weight_scale, resample=args.resample,
                                    strict=not args.lenient)
            except LabelNotInPromptError:
                # an embedding's name tokenizes differently once loaded: the pipeline checks
                # such labels again with the model's own tokenizer
                if not any(name in args.prompt for name in embeddings):
                    raise
    return Inputs(color_map, regions, init, width, height, approx)


def approximations(args: argparse.Namespace) -> Approximations | None:
    """The --tome / --deepcache / --deepcache-branch settings, checked (UsageError), or None
    when none is on. They need the eager UNet: not with --fast or --compile."""
    try:
        approx = Approximations(tome=args.tome, deepcache=args.deepcache,
                                deepcache_branch=args.deepcache_branch)
    except ValueError as exc:
        raise UsageError(f"{exc} (--tome / --deepcache / --deepcache-branch)") from None
    if approx.active and (args.fast or args.compile):
        raise UsageError("--tome and --deepcache need the eager UNet: leave out --fast / --compile")
    return approx if approx.active else None


def _precisions(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """load_model's (dtype, vae_dtype): what `--precision auto` picks on this machine (printed),
    else the named precision and the VAE's default (None: fp32)."""
    if args.precision == "auto":
        from .fast import auto_dtypes
        from .loading import default_device

        unet, vae, report = auto_dtypes(args.device or default_device())
        print(report)
        return unet, vae
    return {"autocast": None, "full": "fp32"}.get(args.precision, args.precision), None


def run(args: argparse.Namespace, img2img: bool) -> list[Path]:
    """Check the inputs, load the model, generate n_iter batches, write numbered PNGs (+ grid, +
    comparison). `args` as `resolve_defaults` returns them."""
    import pww_ldm

    inputs = check_inputs(args, img2img)
    started = time.perf_counter()
    dtype, vae_dtype = _precisions(args)
    model = pww_ldm.load_model(args.ckpt, config=args.config, device=args.device,
                               dtype=dtype, use_ema=args.use_ema,
                               attention=args.attention, channels_last=args.channels_last,
                               compile=args.compile, fast=args.fast, vae=args.vae,
                               vae_dtype=vae_dtype,
                               parameterization="v" if args.v_pred else None)
    prepare_text(model, args)
    outdir = Path(args.outdir or ("outputs/img2img-samples" if img2img else "outputs/txt2img-samples"))
    sample_dir = outdir / "samples"  # created by the first save_png, not before
    count = len(list(sample_dir.glob("*.png")))
    common = dict(steps=args.steps, guidance_scale=args.scale, sampler=args.sampler,
                  negative_prompt=args.negative_prompt, n_images=args.n_samples, eta=args.eta,
                  progress=not args.quiet, width=inputs.width, height=inputs.height,
                  approx=inputs.approx)
    if img2img:
        common.update(init_image=inputs.init_image, strength=args.strength)
        common.update(getattr(args, "inpaint", None) or {})  # mask_image and the rest (inpaint_cli)
    seed = resolve_seed(args.seed)
    written, all_images = [], []
    for it in range(args.n_iter):
        batch_seed = seed + it * args.n_samples
        images, maps = _generate(pww_ldm, model, args, inputs, batch_seed, common)
        for image in images:
            written.append(save_png(image, sample_dir / f"{count:05}.png"))
            count += 1
        if maps is not None:
            files, lines = attention_report(images, maps, inputs.color_map, inputs.regions,
                                            outdir / "attention", count - len(images))
            written += files
            print("\n".join(lines))
        all_images.extend(images)
        if args.compare and inputs.color_map is not None:
            plain, _ = _generate(pww_ldm, model, args, None, batch_seed, common)
            panels = [inputs.color_map.convert("RGB").resize(images[0].size, Image.NEAREST),
                      plain[0], images[0]]
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


def _generate(pww_ldm: Any, model: Any, args: argparse.Namespace, inputs: Inputs | None,
              seed: int, common: dict[str, Any]) -> tuple[list[Image.Image], dict | None]:
    """One batch and its attention maps (None unless --attention-maps); plain Stable Diffusion
    when `inputs` has no colour map (or is None)."""
    hires = hires_options(args)
    if inputs is None or inputs.color_map is None:
        plain = pww_ldm.inpaint if "mask_image" in common else hires_fix if hires else pww_ldm.generate
        return plain(model, args.prompt, seed=seed, **hires, **common), None
    features = FeatureOptions(self_attention=args.self_attention, dense_cross=args.dense_cross,
                              guidance=args.attention_guidance, base_ratio=args.base_ratio,
                              region_cover=args.region_cover,
                              region_bias_tokens=args.region_bias_tokens)
    pww = partial(hires_fix, **hires) if hires else pww_ldm.paint_with_words
    out = pww(
        model, args.prompt, color_map_image=inputs.color_map, color_context=inputs.regions, seed=seed,
        weight_function=args.weight_function, weight_scale=args.weight_scale,
        resample=args.resample, strict=not args.lenient, features=features,
        return_attention=args.attention_maps, **common)
    return out if args.attention_maps else (out, None)


def main(argv: list[str] | None = None, img2img: bool = False) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    tune_malloc()
    args = build_parser(img2img).parse_args(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)  # before any torch work, the model load included
    try:
        run(resolve_defaults(args), img2img)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
