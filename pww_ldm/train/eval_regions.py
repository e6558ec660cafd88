"""Does Paint-with-Words put the right thing in the right place? A benchmark on the demo model.

Held-out layouts of 2-3 shapes (pww_ldm.train.shapes, a seed the training never used) are drawn;
each object's silhouette is painted in its own colour in the colour map, with the colour context
{object colour: "red circle,1.0"}. Each layout is generated with and without PwW from the same
seed, and every output is segmented by colour (each pixel to the nearest palette colour). Per
object: IoU of its colour's pixels with its painted region, whether their centroid lies inside
the region and inside the region's bounding box, the fraction of them inside the region (extra
copies elsewhere lower it), recall (the object is drawn at all), duplicates (blobs of its colour
outside its region) and the attention score (pww_ldm.region.adherence: the share of the label's
attention mass inside the region and the IoU of its thresholded attention map), so the benchmark
shows how well the attention score, which needs no segmenter, tracks the segmentation IoU.
Layout families (shapes.FAMILIES): "train" like the training set, and hard ones unlike it.

The bounding-box centre test is the one the issue's reference numbers used ("object centres inside
their painted box"); the silhouette test is stricter in a way that says little about placement: a
ring's centroid lies in its hole, and a star's thin arms put the centroid of a star drawn one
latent cell (8 px) off outside the painted star.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..approx import Approximations
from ..pipeline import paint_with_words
from ..region.adherence import adherence
from ..region.features import FeatureOptions
from .eval_metrics import duplicates
from .shapes import (
    BACKGROUNDS,
    COLORS,
    FAMILIES,
    Layout,
    caption,
    render_layout,
    sample_family,
    with_article,
)

PALETTE = np.array(list(COLORS.values()) + [c for _, top, bottom in BACKGROUNDS.values()
                                            for c in (top, bottom)], np.float32)
MAP_BACKGROUND = (255, 255, 255)  # unpainted pixels of the colour map (no region)
# Map colours of the background's own regions (when a condition paints the background's words):
# any colours that are not object colours will do.
MAP_TOP, MAP_BOTTOM = (0, 200, 200), (120, 90, 60)
# The own-prompt conditions run before the end-of-text default keep the bias on their words.
WORDS = {"region_bias_tokens": "words"}


@dataclass
class Condition:
    """One way of generating: no PwW (weight_function None) or a weight function and scale,
    plus the region features (FeatureOptions fields, e.g. {"self_attention": 0.3}) and whether
    each object's region carries its own prompt ("a red circle") besides its label; approx: the
    UNet's optional approximations (pww_ldm.approx.Approximations fields, e.g. {"tome": 0.5})."""

    name: str
    weight_function: str | None = None
    weight_scale: float | None = None
    outside: float = 0.0  # each object's weight outside its region (negative pushes it out)
    background: float = 0.0  # weight of the background's words ("sky", "ground") on their area
    features: dict[str, Any] = field(default_factory=dict)
    own_prompts: bool = False
    objects_in_prompt: bool = True  # False: the prompt names only the background, and each
    # object is only its region's own prompt (Regional Prompter's layout); implies own_prompts
    weight: float = 1.0  # each object region's weight (PwW conditions)
    captions: bool = False  # own prompts as one-object training captions ("a red star on a
    # white background") instead of the bare label ("a red star")
    approx: dict[str, Any] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, families: tuple[str, ...] | None = None) -> dict[str, float]:
        """Means over the objects (of these families; None = all) of each numeric score."""
        rows = [s for s in self.scores if families is None or s["family"] in families]
        keys = [k for k, v in (rows[0].items() if rows else ()) if isinstance(v, float)]
        return {k: float(np.mean([s[k] for s in rows])) for k in keys}


def background_regions(layout: Layout, masks: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(label, mask) of the background's named areas not covered by an object (`masks`, the
    layout's (size, size) object masks): "sky" above the horizon and "ground" / "sand" below it,
    or the whole plain "white background"."""
    phrase = BACKGROUNDS[layout.background][0]
    free = ~np.any(masks, axis=0)
    size = free.shape[0]
    if " and " not in phrase:  # "on a white background"
        return [(phrase.split(" a ", 1)[1], free)]
    top, bottom = phrase.removeprefix("with ").split(" and ")
    below = (np.arange(size)[:, None] + 0.5 >= layout.horizon * size) & np.ones((1, size), bool)
    return [(top, free & ~below), (bottom, free & below)]


def object_prompt(label: str, background: str | None = None) -> str:
    """An object's own region prompt: "a red circle" ("an orange circle", the captions' article),
    or with a background key the one-object training caption "a red circle on a white
    background"; its attention map is "prompt: " + this. (Runs before 2026-12-02 wrote "a" before
    every label, "a orange circle" included.)"""
    named = with_article(label)
    return named if background is None else f"{named} {BACKGROUNDS[background][0]}"


def color_map(layout: Layout, size: int, outside: float = 0.0, background: float = 0.0,
              weight: float = 1.0, own_prompts: bool = False, captions: bool = False
              ) -> tuple[Image.Image, list[dict], list[np.ndarray]]:
    """(map image, colour context records, painted masks): each object's visible silhouette in
    its colour, `weight` inside and `outside` elsewhere (own_prompts: the record also carries
    the object's own prompt, e.g. "a red circle", with captions its one-object caption); with
    `background` != 0 the background's areas are painted too, with their words at that weight."""
    _, masks = render_layout(layout, size)
    rgb = np.zeros((size, size, 3), np.uint8) + np.array(MAP_BACKGROUND, np.uint8)
    context = []
    for obj, mask in zip(layout.objects, masks, strict=True):
        rgb[mask] = COLORS[obj.color]
        context.append({"color": COLORS[obj.color], "label": obj.label, "weight": weight,
                        "outside": outside})
        if own_prompts:
            context[-1]["prompt"] = object_prompt(obj.label, layout.background if captions else None)
    if background:
        for (label, mask), color in zip(background_regions(layout, masks), (MAP_TOP, MAP_BOTTOM)):
            rgb[mask] = color
            context.append({"color": color, "label": label, "weight": background})
    return Image.fromarray(rgb), context, masks


def segment(image: Image.Image, color: tuple[int, int, int], max_distance: float = 90.0) -> np.ndarray:
    """(H, W) bool: pixels whose nearest palette colour is `color` (and within max_distance)."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    dist = np.linalg.norm(rgb[:, :, None, :] - PALETTE[None, None], axis=-1)  # (H, W, P)
    nearest = dist.argmin(-1)
    index = int(np.flatnonzero((PALETTE == np.array(color, np.float32)).all(1))[0])
    return (nearest == index) & (dist[..., index] <= max_distance)


def score_object(pred: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Scores of one object: pred and region (H, W) bool -> iou, centre_inside, centre_in_box,
    inside_fraction, recall."""
    inter = float((pred & region).sum())
    union = float((pred | region).sum())
    area = float(pred.sum())
    present = area >= max(40.0, 0.1 * float(region.sum()))
    centre_inside = centre_in_box = 0.0
    if present:
        ys, xs = np.nonzero(pred)
        cy, cx = ys.mean(), xs.mean()
        centre_inside = float(region[int(round(cy - 0.5)), int(round(cx - 0.5))])
        rys, rxs = np.nonzero(region)
        centre_in_box = float(rys.min() <= cy <= rys.max() and rxs.min() <= cx <= rxs.max())
    return {"iou": inter / union if union else 0.0, "centre_inside": centre_inside,
            "centre_in_box": centre_in_box, "inside_fraction": inter / area if area else 0.0,
            "recall": float(present)}


def default_conditions() -> list[Condition]:
    """No PwW; each built-in weight function over scales; the strongest settings with a negative
    weight outside each object's region or the background painted; and the region features
    (DenseDiffusion self-attention 0.3 and cross 1.0, per-region prompts) alone and combined;
    the demo's std x8 with the UNet's approximations (ToMe, DeepCache), for their cost in IoU; the
    strongest self-attention setting of a subset (1.0 over half the steps), with and without a
    negative weight outside; attention guidance (pww_ldm.region.guidance); the objects named only
    by their regions' own prompts (the prompt says only the background), at weight 1 and 2, and
    with the prompt's share inside the regions (base ratio) 0 and 0.2 (at base 0 also at std x4);
    at base 0, the objects' prompts as one-object training captions, the regions' area cover
    instead of the default touch cover (pww_ldm.region.region_prompts), region weights 0 (the
    chunk routed to its cells, no bias) to 0.5, and the bias also or only on the end-of-text
    token of each region's prompt (region_bias_tokens) at std x8 and x4."""
    conds = [Condition("no PwW")]
    for fn, scales in (("max", (0.1, 0.4, 0.8)), ("std", (4.0, 8.0, 12.0, 16.0)),
                       ("log2_std", (2.0,))):
        conds += [Condition(f"{fn} x{s:g}", fn, s) for s in scales]
    conds += [Condition("max x1.6, outside -1", "max", 1.6, -1.0),
              Condition("std x8, outside -1", "std", 8.0, -1.0),
              Condition("max x0.8, background 0.5", "max", 0.8, background=0.5),
              Condition("std x8, background 0.5", "std", 8.0, background=0.5)]
    self_attn, cross = {"self_attention": 0.3}, {"dense_cross": 1.0}
    conds += [Condition("std x8, self 0.3", "std", 8.0, features=self_attn),
              Condition("std x8, own prompts", "std", 8.0, own_prompts=True, features=WORDS),
              Condition("std x8, own prompts, self 0.3", "std", 8.0, features={**self_attn, **WORDS},
                        own_prompts=True),
              Condition("std x8, outside -1, self 0.3", "std", 8.0, -1.0, features=self_attn),
              Condition("std x8, dense cross 1", "std", 8.0, features=cross),
              Condition("dense cross 1 + self 0.3", features={**cross, **self_attn}),
              Condition("std x8, dense cross 1 + self 0.3", "std", 8.0,
                        features={**cross, **self_attn})]
    conds += [Condition("std x8, tome 0.5", "std", 8.0, approx={"tome": 0.5}),
              Condition("std x8, deepcache 2", "std", 8.0, approx={"deepcache": 2}),
              Condition("std x8, deepcache 3", "std", 8.0, approx={"deepcache": 3}),
              Condition("std x8, tome 0.5 + deepcache 3", "std", 8.0,
                        approx={"tome": 0.5, "deepcache": 3})]
    strong_self = {"self_attention": 1.0, "window": 0.5}
    conds += [Condition("std x8, self 1.0 (window 0.5)", "std", 8.0, features=strong_self),
              Condition("std x8, outside -1, self 1.0 (window 0.5)", "std", 8.0, -1.0,
                        features=strong_self),
              Condition("std x8, guidance 0.5", "std", 8.0, features={"guidance": 0.5})]
    return conds + region_prompt_conditions()


def region_prompt_conditions() -> list[Condition]:
    """The objects named only by their regions' own prompts (the prompt says only the
    background): weights, base ratios, scales, captions, area cover and the bias tokens."""
    conds: list[Condition] = []
    conds += [Condition(f"region prompts only{'' if w == 1 else f' x{w:g}'}, std x8", "std", 8.0,
                        objects_in_prompt=False, weight=w, features=WORDS) for w in (1.0, 2.0)]
    conds += [Condition(f"region prompts only, base {b:g}, std x8", "std", 8.0,
                        objects_in_prompt=False, features={**WORDS, "base_ratio": b}) for b in (0.0, 0.2)]
    conds += [Condition("region prompts only, base 0, std x4", "std", 4.0, objects_in_prompt=False,
                        features={**WORDS, "base_ratio": 0.0})]
    conds += [Condition(f"region prompts only x{w:g}, base 0, std x8", "std", 8.0,
                        objects_in_prompt=False, weight=w, features={**WORDS, "base_ratio": 0.0})
              for w in (0.0, 0.25, 0.5)]
    conds += [Condition(f"region prompts only, base 0, std x{s:g}, bias {tokens}", "std", s,
                        objects_in_prompt=False,
                        features={"base_ratio": 0.0, "region_bias_tokens": tokens})
              for tokens, scales in (("words+end", (8.0, 4.0)), ("end", (8.0, 4.0, 12.0, 16.0)))
              for s in scales]
    conds += [Condition("region captions only, base 0, std x8", "std", 8.0, objects_in_prompt=False,
                        captions=True, features={**WORDS, "base_ratio": 0.0}),
              Condition("region prompts only, base 0, std x8, area cover", "std", 8.0,
                        objects_in_prompt=False,
                        features={**WORDS, "base_ratio": 0.0, "region_cover": "area"})]
    return conds


def family_layout(family: str, i: int, seed: int, size: int) -> tuple[Layout, np.random.Generator]:
    """Layout i of a family and its rng (which then draws the caption's order). "train" uses
    np.random.default_rng([seed, i]) and 2 + i % 2 objects, the committed benchmark's layouts;
    family k > 0 of FAMILIES uses default_rng([seed, 1000 * k + i])."""
    k = FAMILIES.index(family)
    rng = np.random.default_rng([seed, i] if k == 0 else [seed, 1000 * k + i])
    n_objects = 2 + i % 2 if family in ("train", "edges", "small") else None
    return sample_family(rng, family, size, n_objects), rng


def _generate(model: Any, cond: Condition, layout: Layout, prompt: str, size: int,
              common: dict[str, Any]) -> tuple[Image.Image, dict[str, Any], float]:
    """One image of a condition, its attention maps and its wall time (s). No PwW is painted
    with weight 0: the same plain-SD image, with the maps observed."""
    weight = 0.0 if cond.weight_function is None else cond.weight
    painted, context, _ = color_map(layout, size, cond.outside, cond.background, weight,
                                    cond.own_prompts or not cond.objects_in_prompt, cond.captions)
    if not cond.objects_in_prompt:
        prompt = BACKGROUNDS[layout.background][0]
        context = [{k: v for k, v in r.items() if k != "label"} for r in context]
    t0 = time.perf_counter()
    images, maps = paint_with_words(model, prompt, painted, context,
                                    weight_function=cond.weight_function or "max",
                                    weight_scale=cond.weight_scale, return_attention=True,
                                    features=FeatureOptions(**cond.features),
                                    approx=Approximations(**cond.approx) if cond.approx else None,
                                    **common)
    if not cond.objects_in_prompt:  # the objects' maps are their region prompts' ("prompt: a x")
        bg = layout.background if cond.captions else None
        maps = {**maps, **{o.label: maps[f"prompt: {object_prompt(o.label, bg)}"] for o in layout.objects}}
    return images[0], maps, time.perf_counter() - t0


def evaluate(model: Any, n_layouts: int = 24, seed: int = 1234, size: int = 128, steps: int = 30,
             guidance_scale: float = 7.5, sampler: str = "euler_a",
             conditions: list[Condition] | None = None, n_examples: int = 6,
             log: Any = print, families: tuple[str, ...] = ("train",),
             n_hard: int | None = None, first: int = 0
             ) -> tuple[list[Condition], list[list[Image.Image]]]:
    """Run the benchmark; returns the conditions with their scores and figure rows.

    n_layouts layouts of "train" (n_hard, default n_layouts, of each other family in `families`);
    layout i uses generation seed seed + i for every condition; first: start at layout `first` of
    each family (split a benchmark over processes, then merge). Figure rows: [target render,
    colour map, one output per condition], the first n_examples of each family run.
    """
    conditions = conditions or default_conditions()
    rows = []
    t0 = time.time()
    for family in families:
        count = n_layouts if family == "train" else (n_hard or n_layouts)
        for i in range(first, first + count):
            layout, rng = family_layout(family, i, seed, size)
            prompt = caption(layout, rng)
            cmap, _, masks = color_map(layout, size)
            row = [Image.fromarray(render_layout(layout, size)[0]), cmap]
            common = dict(steps=steps, guidance_scale=guidance_scale, seed=seed + i,
                          sampler=sampler, width=size, height=size, progress=False)
            for cond in conditions:
                image, maps, seconds = _generate(model, cond, layout, prompt, size, common)
                for obj, mask in zip(layout.objects, masks, strict=True):
                    pred = segment(image, COLORS[obj.color])
                    attn = adherence(maps[obj.label][0], torch.from_numpy(mask))
                    cond.scores.append({**score_object(pred, mask), "family": family, "layout": i,
                                        "shape": obj.shape,
                                        "duplicates": float(duplicates(pred, mask) > 0),
                                        "attn_iou": attn["iou"], "attn_mass": attn["mass_inside"],
                                        "seconds": seconds})
                row.append(image)
            if i - first < n_examples:
                rows.append(row)
            log(f"{family} {i + 1 - first}/{count} ({time.time() - t0:.0f} s): {prompt}")
    return conditions, rows
