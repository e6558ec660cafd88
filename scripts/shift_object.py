#!/usr/bin/env python
"""'Shift the object': the same seed and prompt, one object's painted region moves across the
image, and the object moves with it while the rest stays similar.

    python scripts/shift_object.py            # demo model -> benchmarks/results/shift_object.png
"""

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

import pww_ldm  # noqa: E402
from pww_ldm.allocator import tune_malloc  # noqa: E402
from pww_ldm.images import image_grid, save_png  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RED, BLUE = (220, 30, 30), (30, 60, 220)


def layout_map(x: int, size: int = 128) -> Image.Image:
    """A blue square fixed on the right, a red circle whose left edge is at x px."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([84, 70, 120, 106], fill=BLUE)
    draw.ellipse([x, 14, x + 40, 54], fill=RED)
    return image


def main() -> None:
    """Generate one row of maps and one row of images, written as a single PNG."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=str(REPO / "models" / "pww-demo" / "model.safetensors"))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "shift_object.png"))
    args = p.parse_args()
    tune_malloc()  # as every entry point does
    model = pww_ldm.load_model(args.ckpt)
    prompt = "a red circle and a blue square on a white background"
    # a negative weight outside the circle's region keeps the seed's own circle from staying put
    context = [{"color": RED, "label": "red circle", "weight": 1.0, "outside": -1.0},
               {"color": BLUE, "label": "blue square", "weight": 1.0}]
    maps = [layout_map(x) for x in (6, 30, 54, 78)]
    images = [pww_ldm.paint_with_words(model, prompt, m, context, seed=args.seed, steps=30,
                                       weight_scale=0.8, progress=False)[0] for m in maps]
    grid = image_grid(maps + images, cols=len(maps))
    save_png(grid, args.out, images[0].info["parameters"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
