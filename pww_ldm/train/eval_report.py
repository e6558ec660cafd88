"""The region benchmark's report: tables (per condition, per family, per shape), the attention
score's correlation with the segmentation IoU, the figure, and the results files."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .eval_metrics import pearson
from .eval_regions import Condition
from .shapes import FAMILIES, SHAPES


def correlation(conditions: list[Condition], families: tuple[str, ...] | None = None
                ) -> dict[str, float]:
    """Pearson r of the attention IoU with the segmentation IoU, pooled over the conditions:
    per object, and per layout (each layout's means over its objects)."""
    rows = [s for c in conditions for s in c.scores if families is None or s["family"] in families]
    by_layout: dict[tuple, list[dict]] = {}
    for k, c in enumerate(conditions):
        for s in c.scores:
            if families is None or s["family"] in families:
                by_layout.setdefault((k, s["family"], s["layout"]), []).append(s)
    means = [(np.mean([s["attn_iou"] for s in v]), np.mean([s["iou"] for s in v]))
             for v in by_layout.values()]
    if len(rows) < 2 or len(means) < 2:
        return {"per_object": float("nan"), "per_layout": float("nan"), "n_objects": len(rows)}
    return {"per_object": pearson([s["attn_iou"] for s in rows], [s["iou"] for s in rows]),
            "per_layout": pearson([m[0] for m in means], [m[1] for m in means]),
            "n_objects": len(rows), "n_layouts": len(means)}


COLUMNS = (("iou", "mean IoU"), ("centre_in_box", "centre in box"),
           ("centre_inside", "centre in region"), ("inside_fraction", "inside fraction"),
           ("recall", "recall"), ("duplicates", "duplicates"), ("attn_iou", "attn IoU"),
           ("attn_mass", "attn mass in"), ("seconds", "s / image"))


def markdown_table(conditions: list[Condition], families: tuple[str, ...] | None = None) -> str:
    """A markdown table: one row per condition, mean scores over the objects of `families`."""
    lines = ["| condition | " + " | ".join(name for _, name in COLUMNS) + " |",
             "| --- |" + " --- |" * len(COLUMNS)]
    for c in conditions:
        s = c.summary(families)
        if s:
            lines.append(f"| {c.name} | " + " | ".join(f"{s[k]:.3f}" if k != "seconds"
                                                        else f"{s[k]:.2f}" for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def family_table(conditions: list[Condition]) -> str:
    """Mean IoU per condition (rows) and layout family (columns)."""
    present = [f for f in FAMILIES if any(s["family"] == f for c in conditions for s in c.scores)]
    lines = ["| condition | " + " | ".join(present) + " | all |", "| --- |" + " --- |" * (len(present) + 1)]
    for c in conditions:
        cells = [f"{c.summary((f,)).get('iou', float('nan')):.3f}" for f in present]
        lines.append(f"| {c.name} | " + " | ".join(cells) + f" | {c.summary().get('iou', 0):.3f} |")
    return "\n".join(lines)


def shape_table(conditions: list[Condition]) -> str:
    """Mean IoU / recall per condition (rows) and object shape (columns), over all families;
    empty when the scores carry no shape (results written before shapes were recorded)."""
    present = [sh for sh in SHAPES if any(s.get("shape") == sh for c in conditions for s in c.scores)]
    if not present:
        return ""
    lines = ["| condition | " + " | ".join(present) + " |", "| --- |" + " --- |" * len(present)]
    for c in conditions:
        cells = []
        for sh in present:
            rows = [s for s in c.scores if s.get("shape") == sh]
            cells.append(f"{np.mean([s['iou'] for s in rows]):.3f} / "
                         f"{np.mean([s['recall'] for s in rows]):.2f}" if rows else "-")
        lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(conditions: list[Condition], settings: dict[str, Any]) -> str:
    """The markdown report: training-like and hard-family tables, IoU per family, correlation."""
    hard = tuple(f for f in FAMILIES if f != "train")
    corr, shapes = correlation(conditions), shape_table(conditions)
    return (f"# Paint-with-Words region benchmark (demo model)\n\nSettings: `{json.dumps(settings)}`\n\n"
            f"## Training-like layouts\n\n{markdown_table(conditions, ('train',))}\n\n"
            f"## Hard families ({', '.join(hard)})\n\n{markdown_table(conditions, hard)}\n\n"
            f"## Mean IoU per family\n\n{family_table(conditions)}\n\n"
            + (f"## Mean IoU / recall per shape (all families)\n\n{shapes}\n\n" if shapes else "")
            + f"Attention IoU vs segmentation IoU, Pearson r: {corr['per_object']:.3f} per object, "
            f"{corr['per_layout']:.3f} per layout (pooled over conditions and families).\n\n"
            "Per object: IoU of the pixels of the object's colour with its painted region; centre "
            "in box / in region = the centroid of those pixels lies in the bounding box of the "
            "painted region / in the painted silhouette itself (a ring's centroid is in its hole); "
            "inside fraction = share of those pixels inside the region; recall = the object was "
            "drawn; duplicates = share of objects with a blob of their colour (>= 40 px, <= 10 % "
            "inside) outside their region; attn IoU / attn mass in = the attention score "
            "(pww_ldm.region.adherence, threshold 0.4 of the map's maximum); s / image = wall "
            "time of one generation (attention maps observed in every condition).\n")


def figure(rows: list[list[Image.Image]], names: list[str], size: int = 128) -> Image.Image:
    """A grid PNG: rows of [target, map, outputs...], column names written above."""
    from PIL import ImageDraw

    cols = max((len(r) for r in rows), default=2 + len(names))
    grid = Image.new("RGB", (cols * size, 16 + len(rows) * size), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(["target", "colour map", *names][:cols]):
        draw.text((j * size + 3, 2), name, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((size, size)), (j * size, 16 + i * size))
    return grid


def load_results(paths: list[Path]) -> tuple[list[Condition], list[dict[str, Any]]]:
    """The conditions of several runs' <stem>.json (write_results), each condition's per-object
    scores concatenated in the order of `paths` (runs over different families or layouts of one
    benchmark, e.g. one process per family), and each run's settings. Conditions keep the first
    run's order; a condition missing from a run raises ValueError (the runs do not match)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = [c["name"] for c in runs[0]["conditions"]]
    merged = []
    for name in names:
        found = [next((c for c in run["conditions"] if c["name"] == name), None) for run in runs]
        if any(c is None for c in found):
            missing = [str(p) for p, c in zip(paths, found, strict=True) if c is None]
            raise ValueError(f"condition {name!r} is missing from {missing}: merge runs of the same "
                             "conditions")
        fields = {k: v for k, v in found[0].items()
                  if k not in ("summary", "summary_by_family", "per_object")}
        merged.append(Condition(**fields, scores=[s for c in found for s in c["per_object"]]))
    return merged, [run["settings"] for run in runs]


def write_results(conditions: list[Condition], rows: list[list[Image.Image]] | Image.Image,
                  out_dir: Path, settings: dict[str, Any], stem: str = "eval_regions"
                  ) -> dict[str, Path]:
    """Write <stem>.md, <stem>.json and <stem>.png under out_dir (temporary name, then rename).
    rows: the figure's rows (evaluate), or the finished figure (merged runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = report(conditions, settings)
    data = {"settings": settings, "correlation": correlation(conditions),
            "conditions": [{**{k: v for k, v in asdict(c).items() if k != "scores"},
                            "summary": c.summary(),
                            "summary_by_family": {f: c.summary((f,)) for f in FAMILIES
                                                  if any(s["family"] == f for s in c.scores)},
                            "per_object": c.scores} for c in conditions]}
    paths = {"md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json",
             "png": out_dir / f"{stem}.png"}
    writers = {"md": lambda p: p.write_text(md), "json": lambda p: p.write_text(json.dumps(data, indent=1)),
               "png": lambda p: (rows if isinstance(rows, Image.Image) else figure(
                   rows, [c.name for c in conditions])).save(p, format="PNG")}
    for key, path in paths.items():
        tmp = path.with_name(path.name + ".tmp")
        writers[key](tmp)
        os.replace(tmp, path)
    return paths
