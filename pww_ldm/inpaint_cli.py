"""The inpainting front end (scripts/inpaint_pww.py): the img2img flags plus the mask's.

`--init-img` and `--mask` (white = repaint, as A1111), `--mask-blur`, `--invert-mask`,
`--only-masked` with `--only-masked-padding`; with `--color-map` / `--color-context` the
Paint-with-Words regions steer inside the repainted area. Everything else is `pww_ldm.cli`'s
(its run, outputs and one-line errors); the mask is checked before the model loads.
"""

from __future__ import annotations

import argparse
import sys

from .allocator import tune_malloc
from .cli import build_parser, resolve_defaults, run
from .masking import MaskError, prepare_mask
from .threads import set_threads
from .user_errors import USER_ERRORS, UsageError, open_image


def build_inpaint_parser() -> argparse.ArgumentParser:
    """The img2img parser (strength default 0.75, A1111's) with the mask flags."""
    p = build_parser(img2img=True)
    p.description = ("Paint-with-Words inpainting for Stable Diffusion (any checkpoint; inpainting "
                     "models use their mask channels). Bad input: one line `error: ...`, exit 2.")
    p.set_defaults(strength=0.75)
    p.add_argument("--mask", required=True, help="mask image: white = repaint, black = keep")
    p.add_argument("--mask-blur", type=float, default=4.0, help="mask blur in px (default 4)")
    p.add_argument("--invert-mask", action="store_true", help="repaint the black area instead")
    p.add_argument("--only-masked", action="store_true",
                   help="inpaint only the masked area at full resolution (--W x --H), pasted back")
    p.add_argument("--only-masked-padding", type=int, default=32,
                   help="px around the mask's box with --only-masked (default 32)")
    return p


def inpaint_options(args: argparse.Namespace) -> dict:
    """The pww_ldm.inpaint keywords of the parsed flags; the mask opened and checked here."""
    if args.mask_blur < 0 or args.only_masked_padding < 0:
        raise UsageError("--mask-blur and --only-masked-padding must be >= 0")
    if args.attention_maps:
        raise UsageError("--attention-maps is not available for inpainting")
    mask = open_image(args.mask, "mask")
    try:
        prepare_mask(mask, mask.size, 0, args.invert_mask)
    except MaskError as exc:
        raise UsageError(f"--mask {args.mask}: {exc}") from None
    return dict(mask_image=mask, mask_blur=args.mask_blur, invert_mask=args.invert_mask,
                only_masked=args.only_masked, only_masked_padding=args.only_masked_padding)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    tune_malloc()
    args = build_inpaint_parser().parse_args(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)
    try:
        args.inpaint = inpaint_options(args)
        args.outdir = args.outdir or "outputs/inpaint-samples"
        run(resolve_defaults(args), img2img=True)
    except (*USER_ERRORS, MaskError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
