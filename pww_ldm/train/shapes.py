"""A procedural, seeded data set of coloured shapes with captions: the demo model's world.

Each image holds 1-3 objects (a shape in a named colour) at random positions and sizes on a plain
or two-tone background; the caption names the objects and the background, never where they are,
so the model learns *what* from the text and Paint-with-Words has to supply *where*.

Rendering is signed-distance based (numpy, anti-aliased by clipping the distance to a pixel), so
a 128 x 128 image costs well under a millisecond and the same function draws the held-out layouts
and their region masks for the evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Color = tuple[int, int, int]

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLORS: dict[str, Color] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (245, 215, 30), "purple": (140, 40, 190), "orange": (250, 130, 20),
}
# name -> (caption phrase, top colour, bottom colour); two-tone ones split at a random horizon.
BACKGROUNDS: dict[str, tuple[str, Color, Color]] = {
    "white": ("on a white background", (245, 245, 245), (245, 245, 245)),
    "grey": ("on a grey background", (128, 128, 128), (128, 128, 128)),
    "black": ("on a black background", (20, 20, 20), (20, 20, 20)),
    "sand": ("with sky and sand", (135, 195, 235), (220, 195, 140)),
    "ground": ("with sky and ground", (135, 195, 235), (110, 80, 50)),
}
# Words a caption must never contain: positions are for Paint-with-Words to give.
POSITION_WORDS = frozenset({"left", "right", "top", "bottom", "above", "below", "under", "over",
                            "center", "centre", "middle", "corner", "upper", "lower", "near", "next"})


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape name, colour name, and its box (x0, y0, x1, y1) in pixels."""

    shape: str
    color: str
    box: tuple[float, float, float, float]

    @property
    def label(self) -> str:
        """The caption phrase naming it, e.g. "red circle"."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Layout:
    """A scene: objects in drawing order, a background name and the horizon (fraction of H)."""

    objects: tuple[ShapeObject, ...]
    background: str = "white"
    horizon: float = 0.6


def _shape_sdf(shape: str, px: np.ndarray, py: np.ndarray, s: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) of `shape` with half-size s centred at 0.

    px, py: (H, W) pixel-centre coordinates relative to the centre, y pointing down.
    """
    r = np.hypot(px, py)
    if shape == "circle":
        return r - s
    if shape == "ring":
        return np.abs(r - 0.7 * s) - 0.3 * s
    if shape == "square":
        qx, qy = np.abs(px) - 0.85 * s, np.abs(py) - 0.85 * s
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":  # equilateral, pointing up, centred on its box
        k = np.sqrt(3.0)
        rad = s / k * 1.7
        x = np.abs(px) - rad
        y = -(py - 0.2 * s) + rad / k
        flip = x + k * y > 0
        x, y = np.where(flip, (x - k * y) / 2, x), np.where(flip, (-k * x - y) / 2, y)
        x = x - np.clip(x, -2 * rad, 0)
        return -np.hypot(x, y) * np.sign(y)
    if shape == "star":  # five points, one pointing up; radial distance to the star's outline
        outer, inner = s, 0.45 * s
        phi = np.mod(np.arctan2(px, -py), 2 * np.pi / 5)
        phi = np.minimum(phi, 2 * np.pi / 5 - phi)  # 0 at a point, pi/5 at a notch
        ax, ay = outer, 0.0
        bx, by = inner * np.cos(np.pi / 5), inner * np.sin(np.pi / 5)
        ex, ey = bx - ax, by - ay
        ux, uy = np.cos(phi), np.sin(phi)
        edge = (ax * ey - ay * ex) / (ux * ey - uy * ex)  # ray-edge intersection distance
        return (r - edge) * 0.6
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def object_coverage(obj: ShapeObject, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) float32 in [0, 1] of one object.

    Only the object's box (plus a pixel) is evaluated: rendering cost scales with object area.
    """
    x0, y0, x1, y1 = obj.box
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    lo_x, hi_x = max(int(x0) - 1, 0), min(int(np.ceil(x1)) + 1, size)
    lo_y, hi_y = max(int(y0) - 1, 0), min(int(np.ceil(y1)) + 1, size)
    out = np.zeros((size, size), np.float32)
    if lo_x >= hi_x or lo_y >= hi_y:
        return out
    ys, xs = np.mgrid[lo_y:hi_y, lo_x:hi_x].astype(np.float32) + 0.5
    sdf = _shape_sdf(obj.shape, xs - cx, ys - cy, s)
    out[lo_y:hi_y, lo_x:hi_x] = np.clip(0.5 - sdf, 0.0, 1.0)
    return out


def render_layout(layout: Layout, size: int = 128) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw a layout: image (size, size, 3) uint8 and one bool mask (size, size) per object.

    Masks are where each object is visible (later objects cover earlier ones).
    """
    _, top, bottom = BACKGROUNDS[layout.background]
    ys = np.arange(size, dtype=np.float32)[:, None, None] + 0.5
    below = np.broadcast_to(ys >= layout.horizon * size, (size, size, 1))
    img = np.where(below, np.array(bottom, np.float32), np.array(top, np.float32))
    covers = [object_coverage(obj, size) for obj in layout.objects]
    for obj, cov in zip(layout.objects, covers, strict=True):
        img = img * (1 - cov[..., None]) + np.array(COLORS[obj.color], np.float32) * cov[..., None]
    masks = []
    for i, cov in enumerate(covers):
        visible = cov >= 0.5
        for later in covers[i + 1:]:
            visible &= later < 0.5
        masks.append(visible)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), masks


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def sample_layout(rng: np.random.Generator, size: int = 128, n_objects: int | None = None,
                  max_overlap: float = 0.15, min_half: float = 0.11, max_half: float = 0.24,
                  backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)) -> Layout:
    """A random layout: 1-3 objects (or n_objects) of distinct colours, boxes overlapping at most
    `max_overlap` of the smaller one; half-sizes in [min_half, max_half] * size."""
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    colors = rng.choice(list(COLORS), size=n, replace=False)
    objects: list[ShapeObject] = []
    for color in colors:
        for _ in range(50):
            s = rng.uniform(min_half, max_half) * size
            cx, cy = rng.uniform(s + 1, size - s - 1, size=2)
            box = (float(cx - s), float(cy - s), float(cx + s), float(cy + s))
            if all(_overlap(box, o.box) <= max_overlap for o in objects):
                objects.append(ShapeObject(str(rng.choice(SHAPES)), str(color), box))
                break
    background = str(rng.choice(list(backgrounds)))
    return Layout(tuple(objects), background, float(rng.uniform(0.45, 0.75)))


# Benchmark layout families: "train" is the training distribution (2-3 objects, half-sizes
# 0.11-0.24 of the image); the others are unlike it, where Paint-with-Words is seen to fail.
FAMILIES = ("train", "edges", "small", "large", "same_shape", "tight_row")


def _box(cx: float, cy: float, s: float) -> tuple[float, float, float, float]:
    return (float(cx - s), float(cy - s), float(cx + s), float(cy + s))


def _edge_centre(rng: np.random.Generator, size: int, s: float) -> tuple[float, float]:
    """A centre putting a half-size-s box against an edge (half the time into a corner)."""
    lo, hi = s + 1, size - s - 1
    cx, cy = rng.uniform(lo, hi, size=2)
    if rng.random() < 0.5:  # corner
        return (lo if rng.random() < 0.5 else hi), (lo if rng.random() < 0.5 else hi)
    if rng.random() < 0.5:
        return (lo if rng.random() < 0.5 else hi), cy
    return cx, (lo if rng.random() < 0.5 else hi)


def _place(rng: np.random.Generator, size: int, halves: list[float], edge: bool
           ) -> list[tuple[float, float, float, float]]:
    """Non-overlapping boxes of these half-sizes (an object that finds no room is left out)."""
    boxes: list[tuple[float, float, float, float]] = []
    for s in halves:
        for _ in range(50):
            cx, cy = _edge_centre(rng, size, s) if edge else rng.uniform(s + 1, size - s - 1, 2)
            box = _box(cx, cy, s)
            if all(_overlap(box, b) <= 0.0 for b in boxes):
                boxes.append(box)
                break
    return boxes


def _tight_row(rng: np.random.Generator, size: int) -> list[tuple[float, float, float, float]]:
    """Three equal boxes side by side, 2-4 px apart, in a horizontal row at a random height."""
    s = rng.uniform(0.12, 0.15) * size
    gap = rng.uniform(2, 4)
    width = 6 * s + 2 * gap
    x0 = rng.uniform(1, size - width - 1)
    cy = rng.uniform(s + 1, size - s - 1)
    return [_box(x0 + s + k * (2 * s + gap), cy, s) for k in range(3)]


def sample_family(rng: np.random.Generator, family: str, size: int = 128,
                  n_objects: int | None = None) -> Layout:
    """A held-out layout of a benchmark family (see FAMILIES).

    train: as `sample_layout` with 2-3 objects, no overlap. edges: 2-3 objects against edges
    and corners. small: 2-3 objects of half-size 0.05-0.09 (below training's 0.11). large: one
    object of half-size 0.28-0.40 (above training's 0.24) and one of training size if it fits.
    same_shape: two objects of one shape in two colours. tight_row: three objects in a row,
    2-4 px apart. n_objects: the count for train, edges and small (default: 2 or 3 at random).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown layout family {family!r}; one of {FAMILIES}")
    n = 2 + int(rng.integers(0, 2)) if n_objects is None else n_objects
    if family == "train":
        return sample_layout(rng, size, n_objects=n, max_overlap=0.0)
    if family == "tight_row":
        boxes = _tight_row(rng, size)
    else:
        halves = {"edges": rng.uniform(0.11, 0.2, n), "small": rng.uniform(0.05, 0.09, n),
                  "large": [rng.uniform(0.28, 0.40), rng.uniform(0.11, 0.16)],
                  "same_shape": rng.uniform(0.11, 0.22, 2)}[family]
        boxes = _place(rng, size, [float(h) * size for h in halves], family == "edges")
    colors = rng.choice(list(COLORS), size=len(boxes), replace=False)
    shapes = ([str(rng.choice(SHAPES))] * len(boxes) if family == "same_shape"
              else [str(rng.choice(SHAPES)) for _ in boxes])
    objects = tuple(ShapeObject(shape, str(color), box)
                    for shape, color, box in zip(shapes, colors, boxes, strict=True))
    return Layout(objects, str(rng.choice(list(BACKGROUNDS))), float(rng.uniform(0.45, 0.75)))


def with_article(label: str) -> str:
    """"an orange circle", "a red star": the label with the article the captions use."""
    return ("an " if label[0] in "aeiou" else "a ") + label


def caption(layout: Layout, rng: np.random.Generator | None = None) -> str:
    """e.g. "a red circle and a blue square on a white background" (objects in random order).

    Each object's label ("red circle") appears verbatim: Paint-with-Words finds its tokens.
    """
    order = list(range(len(layout.objects)))
    if rng is not None:
        rng.shuffle(order)
    names = [with_article(layout.objects[i].label) for i in order]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} {BACKGROUNDS[layout.background][0]}"


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ShapesDataset(Dataset):
    """Index -> {"image": (3, size, size) float in [-1, 1], "caption": str}, a pure function of
    (seed, index), so any worker layout or resume point gives the same stream.

    `length` is nominal (the set is procedural); `CountingSampler` walks it without end.
    """

    def __init__(self, size: int = 128, seed: int = 0, length: int = 10**9) -> None:
        if size % 8:
            raise ValueError(f"size must be a multiple of 8, got {size}")
        self.size, self.seed, self.length = size, seed, length

    def __len__(self) -> int:
        """The nominal length."""
        return self.length

    def layout(self, index: int) -> tuple[Layout, str]:
        """The layout and caption of one index."""
        rng = np.random.default_rng([self.seed, index])
        layout = sample_layout(rng, self.size)
        return layout, caption(layout, rng)

    def __getitem__(self, index: int) -> dict:
        """{"image": (3, size, size) float32 in [-1, 1], "caption": str}."""
        layout, text = self.layout(index)
        image, _ = render_layout(layout, self.size)
        return {"image": to_tensor(image), "caption": text}


class CountingSampler(Sampler[int]):
    """Indices start, start+1, ... without end: a resumed run continues the stream."""

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        """Yield start, start + 1, ... forever."""
        i = self.start
        while True:
            yield i
            i += 1
