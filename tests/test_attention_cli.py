"""--attention-maps on the scripts: heatmap PNGs per label with the region outlined, a grid, and
the attention score printed; the heatmap helpers by hand."""

import numpy as np
import pytest
import torch
from PIL import Image

from pww_ldm import cli
from pww_ldm.heatmaps import colorize, outline, overlay


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_model_writes_maps_and_scores(capsys, tmp_path, keep_threads):
    status = cli.main(["--steps", "2", "--threads", "1", "--outdir", str(tmp_path), "--quiet",
                       "--no-compare", "--attention-maps", "--self-attention", "0.3",
                       "--attention-guidance", "0.2"])
    out, err = capsys.readouterr()
    assert status == 0, err
    maps = sorted((tmp_path / "attention").glob("00000-attn-*.png"))
    # demo.json paints three labels: three overlays and the grid (map | image | 3 heatmaps)
    assert [p.name for p in maps] == [f"00000-attn-{k}.png" for k in range(3)] + ["00000-attn-grid.png"]
    labels = {Image.open(p).text.get("label") for p in maps[:3]}
    assert labels == {"red circle", "blue square", "yellow star"}
    assert Image.open(maps[-1]).size[0] == 5 * 128
    assert out.count("attention of ") == 3 and "IoU" in out
    parameters = Image.open(tmp_path / "samples" / "00000.png").info["parameters"]
    assert "PwW self-attention: 0.3" in parameters and "PwW guidance: 0.2" in parameters


def test_overlay_outline_and_ramp():
    assert colorize(np.array([[0.0, 1.0]])).tolist() == [[[0, 0, 4], [252, 255, 164]]]
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    ring = outline(mask)
    assert ring.sum() == 12 and not ring[2:4, 2:4].any()  # a 4x4 square's border: 12 px
    image = Image.new("RGB", (6, 6), (10, 20, 30))
    out = np.asarray(overlay(image, torch.zeros(3, 3), mask, alpha=0.5))
    assert (out[ring] == 255).all()  # outline in white
    assert out[0, 0].tolist() == [5, 10, 17]  # zero map: half the image + half of ramp 0 (0, 0, 4)
