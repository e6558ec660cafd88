"""Scores of the region benchmark beyond IoU: extra copies of an object, and how well the
attention score tracks the colour-segmentation IoU."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_BLOB = 40  # px: a blob this large counts as drawn (the recall threshold of score_object)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of an (H, W) bool mask: (labels (H, W) int, 0 = background,
    1..k the components; k). Min-label propagation with pointer jumping (no SciPy here)."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        prev = labels
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                        padded[1:-1, :-2], padded[1:-1, 2:]])
        labels = np.where(mask, neighbours, big)
        flat = np.concatenate([[0], labels.ravel()])  # label l -> labels of pixel l-1 (jump)
        jumped = np.where(mask, flat[np.minimum(labels, h * w)], big)
        labels = np.where(mask, np.minimum(labels, jumped), big)
        if np.array_equal(labels, prev):
            break
    out = np.zeros((h, w), np.int64)
    roots = np.unique(labels[mask])
    out[mask] = np.searchsorted(roots, labels[mask]) + 1
    return out, len(roots)


def duplicates(pred: np.ndarray, region: np.ndarray, min_area: int = MIN_BLOB,
               max_inside: float = 0.1) -> int:
    """Extra copies of an object: blobs of its colour (pred (H, W) bool) of at least min_area px
    with at most max_inside of their pixels inside its painted region (H, W) bool."""
    labels, k = components(pred)
    if k == 0:
        return 0
    area = np.bincount(labels.ravel(), minlength=k + 1)[1:]
    inside = np.bincount(labels[region], minlength=k + 1)[1:]
    return int(((area >= min_area) & (inside <= max_inside * area)).sum())


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equally long sequences (nan when either is constant)."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"pearson needs two sequences of one length >= 2, got {len(a)}, {len(b)}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")
