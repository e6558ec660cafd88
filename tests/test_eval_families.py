"""The region benchmark's layout families, duplicate counting and the attention-score columns."""

from pathlib import Path

import numpy as np
import pytest

from pww_ldm.train.eval_metrics import components, duplicates, pearson
from pww_ldm.train.eval_regions import Condition, evaluate, family_layout
from pww_ldm.train.eval_report import correlation, report
from pww_ldm.train.shapes import FAMILIES, render_layout, sample_layout

DEMO = Path(__file__).resolve().parent.parent / "models" / "pww-demo" / "model.safetensors"


def halves(layout):
    return [(o.box[2] - o.box[0]) / 2 for o in layout.objects]


def test_train_family_is_the_committed_benchmark_layouts():
    for i in range(4):
        layout, _ = family_layout("train", i, 1234, 128)
        rng = np.random.default_rng([1234, i])
        assert layout == sample_layout(rng, 128, n_objects=2 + i % 2, max_overlap=0.0)


@pytest.mark.parametrize("i", range(6))
def test_hard_families_are_unlike_training(i):
    size = 128
    edges, _ = family_layout("edges", i, 7, size)
    assert all(min(o.box[0], o.box[1]) <= 1.01 or max(o.box[2], o.box[3]) >= size - 1.01
               for o in edges.objects)  # every object against an edge
    small, _ = family_layout("small", i, 7, size)
    assert max(halves(small)) < 0.09 * size + 1e-6  # below training's 0.11
    large, _ = family_layout("large", i, 7, size)
    assert max(halves(large)) >= 0.28 * size  # above training's 0.24
    same, _ = family_layout("same_shape", i, 7, size)
    assert len({o.shape for o in same.objects}) == 1 and len({o.color for o in same.objects}) == 2
    row, _ = family_layout("tight_row", i, 7, size)
    boxes = sorted(o.box for o in row.objects)
    gaps = [b[0] - a[2] for a, b in zip(boxes, boxes[1:])]
    assert len(boxes) == 3 and all(2 <= g <= 4 for g in gaps)
    for layout in (edges, small, large, same, row):
        masks = render_layout(layout, size)[1]
        assert all(m.sum() > 0 for m in masks)
    assert FAMILIES[0] == "train"


def test_components_duplicates_and_pearson_by_hand():
    pred = np.zeros((20, 20), bool)
    pred[0:8, 0:8] = True  # the object, inside its region
    pred[12:20, 12:20] = True  # a 64 px copy elsewhere
    pred[0:2, 15:17] = True  # a 4 px speck: not a copy
    region = np.zeros_like(pred)
    region[0:10, 0:10] = True
    labels, k = components(pred)
    assert k == 3 and labels[0, 0] != labels[19, 19] and labels[0, 0] == labels[7, 7]
    assert duplicates(pred, region) == 1
    assert duplicates(pred, region, min_area=65) == 0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # cov 1 / (var 1.25)


@pytest.mark.slow
def test_evaluate_reports_attention_scores_per_family():
    import pww_ldm

    model = pww_ldm.load_model(DEMO, device="cpu")
    conds = [Condition("no PwW"), Condition("std x8, self 0.3", "std", 8.0,
                                            features={"self_attention": 0.3})]
    evaluate(model, n_layouts=1, steps=2, conditions=conds, families=("train", "edges"),
             log=lambda *_: None)
    row = conds[1].scores[0]
    assert {"attn_iou", "attn_mass", "duplicates", "seconds", "iou"} <= set(row)
    assert {s["family"] for s in conds[0].scores} == {"train", "edges"}
    assert 0 <= row["attn_iou"] <= 1 and row["seconds"] > 0
    text = report(conds, {"steps": 2})
    assert "## Hard families" in text and "| std x8, self 0.3 |" in text
    assert np.isfinite(correlation(conds)["per_object"])
