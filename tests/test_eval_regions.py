"""A small region evaluation on the shipped demo model: Paint-with-Words must place things."""

import json
from pathlib import Path

import pytest

import pww_ldm
from pww_ldm.train.eval_regions import Condition, evaluate

DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "pww-demo"
DEMO = DEMO_DIR / "model.safetensors"


@pytest.mark.slow
def test_pww_beats_no_pww_by_a_clear_margin():
    model = pww_ldm.load_model(DEMO, device="cpu")
    demo = json.loads((DEMO_DIR / "demo.json").read_text())  # the weighting the demo ships with
    plain = Condition("no PwW")
    painted = Condition("demo default", demo["weight_function"], demo["weight_scale"])
    evaluate(model, n_layouts=8, steps=12, conditions=[plain, painted], log=lambda *_: None)
    base, pww = plain.summary(), painted.summary()
    assert pww["iou"] > base["iou"] + 0.15 and pww["iou"] > 2.5 * base["iou"], (base, pww)
    assert pww["centre_inside"] > base["centre_inside"] + 0.2, (base, pww)
    assert pww["centre_in_box"] > base["centre_in_box"] + 0.3, (base, pww)
    assert pww["recall"] >= 0.9
