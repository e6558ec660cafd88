"""Region benchmark of the demo model: mean IoU etc. with and without Paint-with-Words.

    python scripts/eval_regions.py                       # 24 held-out layouts, all conditions
    python scripts/eval_regions.py --n 4 --out /tmp/ev   # a quick look
    python scripts/eval_regions.py --families all --n 50 --n-hard 10   # + the hard layout families
    python scripts/eval_regions.py --merge a/eval_regions.json b/eval_regions.json --out c
                                                         # one report of runs split over processes

Prints a markdown table; writes outputs/eval_regions/eval_regions.{md,json,png} (pass
--out benchmarks/results to update the committed results).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

from pww_ldm.allocator import tune_malloc  # noqa: E402
from pww_ldm.paths import DEMO_CKPT  # noqa: E402

DEFAULT_OUT = Path("outputs") / "eval_regions"  # never the committed benchmarks/results/


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of this script."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default=str(DEMO_CKPT))
    p.add_argument("--n", type=int, default=24, help="held-out layouts (2-3 objects each)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--sampler", default="euler_a")
    p.add_argument("--examples", type=int, default=6, help="rows in the figure (per family)")
    p.add_argument("--families", nargs="*", default=["train"],
                   help="layout families: train (like the training set), edges, small, large, "
                        "same_shape, tight_row, or all")
    p.add_argument("--n-hard", type=int, default=None,
                   help="layouts per family other than train (default: --n)")
    p.add_argument("--first", type=int, default=0,
                   help="start at this layout of each family (split a run over processes, then "
                        "--merge their results)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conditions", nargs="*", default=None,
                   help="names of the conditions to run (default: all), e.g. 'no PwW' 'max x0.8'")
    p.add_argument("--merge", nargs="+", default=None, metavar="RUN.json",
                   help="write one report of earlier runs' eval_regions.json (same conditions, "
                        "e.g. the families run in separate processes) instead of running")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help=f"output folder (default {DEFAULT_OUT}; benchmarks/results holds the "
                        "committed results)")
    return p


def merge(paths: list[str], out: str) -> int:
    """Write one report (md, json, the runs' figures stacked) of runs written by this script."""
    from PIL import Image

    from pww_ldm.train.eval_report import load_results, report, write_results

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        print(f"error: --merge: no such file {missing}", file=sys.stderr)
        return 2
    conditions, runs = load_results([Path(p) for p in paths])
    figures = [Image.open(Path(p).with_suffix(".png")).convert("RGB") for p in paths
               if Path(p).with_suffix(".png").is_file()]
    stacked = Image.new("RGB", (max(f.width for f in figures), sum(f.height for f in figures)),
                        "white") if figures else Image.new("RGB", (1, 1), "white")
    top = 0
    for f in figures:
        stacked.paste(f, (0, top))
        top += f.height
    settings = {"merged": runs, "wall_s": sum(r.get("wall_s", 0.0) for r in runs)}
    print(report(conditions, settings))
    paths_out = write_results(conditions, stacked, Path(out), settings)
    print(json.dumps({k: str(v) for k, v in paths_out.items()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse options, run pww_ldm.train.eval_regions.evaluate, print and write the results."""
    tune_malloc()
    import pww_ldm
    from pww_ldm.threads import set_threads
    from pww_ldm.train.eval_regions import default_conditions, evaluate
    from pww_ldm.train.eval_report import report, write_results
    from pww_ldm.train.shapes import FAMILIES

    p = build_parser()
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.first < 0:
        p.error(f"--first must be >= 0, got {args.first}")
    set_threads(args.threads)
    conditions = default_conditions()
    if args.conditions:
        unknown = set(args.conditions) - {c.name for c in conditions}
        if unknown:
            p.error(f"unknown conditions {sorted(unknown)}; valid: {[c.name for c in conditions]}")
        conditions = [c for c in conditions if c.name in args.conditions]
    families = tuple(FAMILIES) if "all" in args.families else tuple(args.families)
    if set(families) - set(FAMILIES):
        p.error(f"unknown families {sorted(set(families) - set(FAMILIES))}; valid: {FAMILIES} or all")
    model = pww_ldm.load_model(args.ckpt, device="cpu")
    t0 = time.time()
    conditions, rows = evaluate(model, n_layouts=args.n, seed=args.seed, steps=args.steps,
                                guidance_scale=args.guidance_scale, sampler=args.sampler,
                                conditions=conditions, n_examples=args.examples,
                                families=families, n_hard=args.n_hard, first=args.first,
                                log=lambda s: print(s, file=sys.stderr))
    settings = {"ckpt": Path(args.ckpt).name, "layouts": args.n, "seed": args.seed,
                "families": list(families), "layouts_per_hard_family": args.n_hard or args.n,
                "first_layout": args.first,
                "threads": args.threads,
                "steps": args.steps, "guidance_scale": args.guidance_scale, "sampler": args.sampler,
                "size": 128, "wall_s": round(time.time() - t0, 1)}
    print(report(conditions, settings))
    paths = write_results(conditions, rows, Path(args.out), settings)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
