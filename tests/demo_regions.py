"""The demo model's scene (models/pww-demo/demo.json) and how well its regions are followed:
the placement check shared by the approximation tests."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import pww_ldm
from pww_ldm import paths
from pww_ldm.train.eval_regions import score_object, segment

DEMO = json.loads((paths.DEMO_DIR / "demo.json").read_text())


def demo_model():
    """The bundled demo model (14.8 M parameters, 128 px images)."""
    return pww_ldm.load_model(paths.DEMO_CKPT)


def region_ious(model, steps: int = 8, seed: int = 1, **kwargs) -> tuple[float, float]:
    """(mean IoU without PwW, mean IoU with PwW) of demo.json's objects: each object's colour
    segmented in the image against its painted region; keywords go to both generations."""
    cmap = Image.open(paths.DEMO_DIR / DEMO["color_map"]).convert("RGB")
    painted = np.asarray(cmap)
    common = dict(steps=steps, seed=seed, progress=False, width=cmap.width, height=cmap.height,
                  sampler=DEMO["sampler"], guidance_scale=DEMO["scale"], **kwargs)
    plain = pww_ldm.generate(model, DEMO["prompt"], **common)[0]
    pww = pww_ldm.paint_with_words(model, DEMO["prompt"], cmap, DEMO["color_context"],
                                   weight_function=DEMO["weight_function"],
                                   weight_scale=DEMO["weight_scale"], **common)[0]
    scores = []
    for colour in DEMO["color_context"]:
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        region = (painted == rgb).all(-1)
        scores.append([score_object(segment(image, rgb), region)["iou"] for image in (plain, pww)])
    return tuple(float(v) for v in np.mean(scores, axis=0))
