"""Masks: colour maps of any mode, blur, UNet grid levels, area and bilinear resampling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pww_ldm.region import ColorMapError, gaussian_blur, grid_level, resample_mask
from pww_ldm.region.masks import area_matrix, color_mask, to_rgb


@pytest.mark.parametrize(
    "height, width, grids",
    [
        (600, 800, [(75, 100), (38, 50), (19, 25), (10, 13)]),
        (520, 520, [(65, 65), (33, 33), (17, 17), (9, 9)]),
        (1000, 1000, [(125, 125), (63, 63), (32, 32), (16, 16)]),
        (512, 768, [(64, 96), (32, 48), (16, 24), (8, 12)]),
    ],
)
def test_grid_levels(height, width, grids) -> None:
    for k, grid in enumerate(grids):
        assert grid_level(height, width, grid) == k


def test_grid_not_a_level() -> None:
    with pytest.raises(ColorMapError, match="not a UNet level"):
        grid_level(600, 800, (37, 50))


def test_area_matrix_counts_in_image_pixels_only() -> None:
    # 600 px, cells of 16: 38 cells, the last one has only 8 in-image pixels.
    a = area_matrix(600, 38, 16)
    assert a.shape == (38, 600)
    assert torch.allclose(a.sum(1), torch.ones(38))
    assert (a[-1, 592:] == 1 / 8).all() and (a[-1, :592] == 0).all()
    assert (a[0, :16] == 1 / 16).all()


def test_area_resampling_exact_and_mass_preserving() -> None:
    torch.manual_seed(0)
    mask = (torch.rand(600, 800) > 0.7).float()
    for k, grid in enumerate([(75, 100), (38, 50), (19, 25), (10, 13)]):
        s = 8 * 2**k
        out = resample_mask(mask, grid, "area")
        # Cell (i, j) = mean of the in-image pixels of its s x s block (numpy slices clip).
        m = mask.numpy()
        for i, j in [(0, 0), (grid[0] - 1, grid[1] - 1), (grid[0] // 2, 3)]:
            block = m[i * s : (i + 1) * s, j * s : (j + 1) * s]
            assert out[i, j].item() == pytest.approx(block.mean(), abs=1e-6)
        # Weighted by in-image pixel counts, the cells hold exactly the mask's mass.
        rows = torch.tensor([min(s, 600 - i * s) for i in range(grid[0])], dtype=torch.float32)
        cols = torch.tensor([min(s, 800 - j * s) for j in range(grid[1])], dtype=torch.float32)
        assert (rows[:, None] * cols[None] * out).sum().item() == pytest.approx(mask.sum().item())


def test_bilinear_is_the_reference_call() -> None:
    # The reference (paint-with-words-sd) resamples with scale_factor=1/ratio; with
    # align_corners=True that equals size=(H//ratio, W//ratio), our call, for sizes divisible by 64.
    torch.manual_seed(0)
    mask = (torch.rand(512, 768) > 0.5).float()
    for ratio in (8, 16, 32, 64):
        ref = F.interpolate(
            mask[None, None], scale_factor=1 / ratio, mode="bilinear", align_corners=True
        ).squeeze()
        out = resample_mask(mask, (512 // ratio, 768 // ratio), "bilinear")
        assert torch.allclose(out, ref, atol=1e-6)


def test_bilinear_and_area_differ_on_thin_regions() -> None:
    # A 2-px line: area keeps its share, bilinear (point sampling at align_corners) may miss it.
    mask = torch.zeros(64, 64)
    mask[:, 20:22] = 1
    area = resample_mask(mask, (8, 8), "area")
    bilinear = resample_mask(mask, (8, 8), "bilinear")
    assert area[:, 2].eq(0.25).all() and area.sum() * 64 == mask.sum()
    assert bilinear.sum() * 64 != mask.sum()


def test_resample_batched_and_unknown_mode() -> None:
    masks = torch.rand(3, 64, 40)
    out = resample_mask(masks, (4, 3), "area")
    assert out.shape == (3, 4, 3)
    assert torch.allclose(out[1], resample_mask(masks[1], (4, 3), "area"))
    with pytest.raises(ColorMapError, match="unknown mask resampling 'cubic'"):
        resample_mask(masks, (4, 3), "cubic")


def test_gaussian_blur() -> None:
    impulse = torch.zeros(61, 61)
    impulse[30, 30] = 1.0
    blurred = gaussian_blur(impulse, 3.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    y = torch.arange(61, dtype=torch.float32) - 30
    var_y = (blurred.sum(1) * y**2).sum().item()
    assert var_y == pytest.approx(9.0, rel=0.02)
    assert torch.allclose(blurred, blurred.T, atol=1e-7)  # separable and isotropic
    # Replicated borders: a full mask stays full; sigma 0 is the identity.
    assert torch.allclose(gaussian_blur(torch.ones(16, 24), 5.0), torch.ones(16, 24))
    assert gaussian_blur(impulse, 0) is impulse


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "I"])
def test_map_modes_convert_to_rgb(mode) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:8] = 255 if mode in ("L", "LA", "I") else (255, 0, 0)
    image = Image.fromarray(rgb, "RGB")
    if mode == "I":
        image = Image.fromarray((rgb[..., 0].astype(np.int32)), "I")
    elif mode == "P":
        image = image.quantize(colors=4)
    else:
        image = image.convert(mode)
    out = to_rgb(image, (24, 16))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert (out[:8] == rgb[:8]).all() and (out[8:] == 0).all()


def test_map_of_other_size_resized_nearest_with_warning() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = (0, 0, 255)
    with pytest.warns(UserWarning, match="8x8 px but the output is 16x32 px"):
        out = to_rgb(Image.fromarray(rgb), (16, 32))
    assert out.shape == (32, 16, 3)
    colors = {tuple(c) for c in out.reshape(-1, 3).tolist()}
    assert colors == {(0, 0, 0), (0, 0, 255)}  # nearest: no blended colours
    mask = color_mask(out, (0, 0, 255))
    assert mask[:, 8:].eq(1).all() and mask[:, :8].eq(0).all()


def test_map_must_be_an_image() -> None:
    with pytest.raises(ColorMapError, match="PIL image"):
        to_rgb(np.zeros((8, 8, 3)), (8, 8))
