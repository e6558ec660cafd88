"""The demo-model training: data set, both Lightning stages on a tiny config, export, resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import pww_ldm
from pww_ldm.train import run
from pww_ldm.train.eval_regions import MAP_BOTTOM, MAP_TOP, color_map, score_object, segment
from pww_ldm.train.shapes import (
    COLORS,
    POSITION_WORDS,
    SHAPES,
    Layout,
    ShapeObject,
    ShapesDataset,
    render_layout,
    sample_layout,
)

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo"


def tiny_configs(tmp_path: Path) -> tuple[Path, Path]:
    """The demo configs shrunk: 32 px images, VAE factor 2, UNet 32 channels, CLIP width 32."""
    ae = OmegaConf.load(DEMO / "autoencoder.yaml")
    ldm = OmegaConf.load(DEMO / "ldm.yaml")
    dd = dict(ch=32, ch_mult=[1, 2], resolution=32, num_res_blocks=1)
    for cfg in (ae.model.params.ddconfig, ldm.model.params.first_stage_config.params.ddconfig):
        cfg.update(dd)
    for cfg in (ae, ldm):
        cfg.data.params.size = 32
        cfg.data.batch_size = 2
        cfg.data.num_workers = 0
        cfg.lightning.trainer.log_every_n_steps = 1
    ldm.data.latent_cache = 6  # the shipped recipe trains on cached latents
    unet = ldm.model.params.unet_config.params
    unet.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, num_head_channels=16,
                context_dim=32, image_size=16)
    ldm.model.params.cond_stage_config.params.config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        projection_dim=32)
    paths = tmp_path / "ae.yaml", tmp_path / "ldm.yaml"
    OmegaConf.save(ae, paths[0])
    OmegaConf.save(ldm, paths[1])
    return paths


def _ckpt_state(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["global_step"], ckpt["state_dict"]


def test_two_stages_train_export_and_load(tmp_path: Path) -> None:
    ae_cfg, ldm_cfg = tiny_configs(tmp_path)
    out, export = tmp_path / "run", tmp_path / "export"
    common = ["--ae-config", str(ae_cfg), "--ldm-config", str(ldm_cfg), "--out", str(out),
              "--export-dir", str(export), "--accelerator", "cpu", "--minutes", "5",
              "--threads", str(torch.get_num_threads())]
    summary = run.main([*common, "--max-steps", "2"])
    assert math.isfinite(summary["autoencoder_loss"]) and math.isfinite(summary["ldm_loss"])
    assert sorted(p.name for p in export.iterdir()) == ["model.safetensors", "model.yaml"]
    assert len(torch.load(out / "ldm" / run.LATENT_CACHE, weights_only=True)["captions"]) == 6

    model = pww_ldm.load_model(export / "model.safetensors", device="cpu")
    assert model.scale_factor == pytest.approx(summary["scale_factor"]) and model.scale_factor != 1.0
    step, state = _ckpt_state(out / "ldm" / "last.ckpt")
    assert step == 2
    expected = {}
    for key, value in state.items():
        for old, new in (("ema_unet.", "model."), ("ema_text.", "cond_stage_model."),
                         ("model.first_stage_model.", "first_stage_model.")):
            if key.startswith(old):
                expected[new + key[len(old):]] = value
    loaded = model.state_dict()
    for key, value in expected.items():
        if key in loaded:
            torch.testing.assert_close(loaded[key], value.half().float(), rtol=0, atol=0)
    assert set(expected) - set(loaded) <= {k for k in expected if k.endswith("position_ids")}
    # the EMA copy is what ships: it differs from the live weights after two steps
    live = state["model.model.diffusion_model.out.2.weight"]
    assert not torch.equal(loaded["model.diffusion_model.out.2.weight"], live.half().float())

    # resume the autoencoder stage: it continues from step 2
    run.main([*common, "--stage", "autoencoder", "--resume", "--max-steps", "3"])
    assert _ckpt_state(out / "autoencoder" / "last.ckpt")[0] == 3


def test_dataset_is_deterministic_for_a_seed() -> None:
    a, b, c = ShapesDataset(64, seed=3), ShapesDataset(64, seed=3), ShapesDataset(64, seed=4)
    for i in (0, 7, 123):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(4))
    item = a[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0


def test_captions_name_objects_never_positions() -> None:
    ds = ShapesDataset(128, seed=0)
    for i in range(400):
        layout, text = ds.layout(i)
        words = set(text.replace(",", " ").split())
        assert not words & POSITION_WORDS, text
        for obj in layout.objects:
            assert obj.label in text and obj.shape in SHAPES and obj.color in COLORS
        assert len({o.color for o in layout.objects}) == len(layout.objects)


def test_render_layout_masks_and_segmentation() -> None:
    layout = Layout((ShapeObject("square", "red", (10, 10, 50, 50)),
                     ShapeObject("circle", "blue", (70, 70, 110, 110))), "white")
    image, masks = render_layout(layout, 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert tuple(image[30, 30]) == COLORS["red"] and tuple(image[90, 90]) == COLORS["blue"]
    assert masks[0][30, 30] and not masks[0][90, 90] and masks[1][90, 90]
    cmap, context, painted = color_map(layout, 128, outside=-1.0)
    assert context == [
        {"color": COLORS["red"], "label": "red square", "weight": 1.0, "outside": -1.0},
        {"color": COLORS["blue"], "label": "blue circle", "weight": 1.0, "outside": -1.0}]
    assert tuple(np.asarray(cmap)[30, 30]) == COLORS["red"]
    from PIL import Image

    pred = segment(Image.fromarray(image), COLORS["red"])
    scores = score_object(pred, painted[0])
    assert scores["iou"] > 0.95 and scores["centre_inside"] == 1.0 and scores["recall"] == 1.0
    assert scores["centre_in_box"] == 1.0


def test_ring_centre_is_in_its_box_but_not_its_silhouette() -> None:
    layout = Layout((ShapeObject("ring", "red", (10, 10, 50, 50)),), "white")
    _, masks = render_layout(layout, 128)
    scores = score_object(masks[0], masks[0])  # drawn exactly where painted
    assert scores["iou"] == 1.0 and scores["centre_in_box"] == 1.0 and scores["centre_inside"] == 0.0
    moved = np.roll(masks[0], 60, axis=1)  # the same ring drawn far to the right
    assert score_object(moved, masks[0])["centre_in_box"] == 0.0


def test_background_words_are_painted_around_the_objects() -> None:
    layout = Layout((ShapeObject("square", "red", (10, 10, 50, 50)),), "ground", horizon=0.5)
    cmap, context, _ = color_map(layout, 128, background=0.5)
    rgb = np.asarray(cmap)
    assert [c["label"] for c in context] == ["red square", "sky", "ground"]
    assert all(c["weight"] == 0.5 for c in context[1:])
    assert tuple(rgb[30, 30]) == COLORS["red"]  # the object keeps its colour
    assert tuple(rgb[5, 100]) == MAP_TOP and tuple(rgb[120, 100]) == MAP_BOTTOM
    plain = Layout(layout.objects, "black")
    _, plain_context, _ = color_map(plain, 128, background=1.0)
    assert plain_context[-1]["label"] == "black background"
    assert tuple(np.asarray(color_map(plain, 128, background=1.0)[0])[120, 100]) == MAP_TOP


def test_sample_layout_respects_overlap_and_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        layout = sample_layout(rng, 128, n_objects=3, max_overlap=0.0)
        _, masks = render_layout(layout, 128)
        for obj, mask in zip(layout.objects, masks, strict=True):
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and mask.any()


def test_flush_denormals_is_on_inside_and_restored_after() -> None:
    assert not run.denormals_flushed()  # torch's default: denormals are computed
    with run.flush_denormals() as on:
        if not on:
            pytest.skip("this CPU has no flush-to-zero mode")
        assert run.denormals_flushed()
        tiny = torch.full((4,), 1e-39)
        assert torch.equal(tiny * 1.5, torch.zeros(4))
    assert not run.denormals_flushed()
    assert (torch.full((4,), 1e-39) * 1.5).ne(0).all()


def test_autoencoder_betas_come_from_the_config() -> None:
    cfg = OmegaConf.load(DEMO / "autoencoder.yaml")
    module = run.make_module(cfg)
    opt = module.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["betas"] == tuple(cfg.lightning.module.params.betas) != (0.5, 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(
        float(cfg.model.base_learning_rate) / cfg.lightning.module.params.warmup_steps)


def test_min_snr_weights_cap_the_nearly_clean_timesteps(tmp_path: Path) -> None:
    _, ldm_path = tiny_configs(tmp_path)
    cfg = OmegaConf.load(ldm_path)
    cfg.lightning.module.params.snr_gamma = None  # CompVis's plain eps MSE
    plain = run.make_module(cfg)
    cfg.lightning.module.params.snr_gamma = 5.0
    capped = run.make_module(cfg)
    t = torch.tensor([0, 100, 400, 999])
    ac = capped.model.alphas_cumprod[t].double()
    snr = ac / (1 - ac)
    assert snr[0] > 5 > snr[-1]  # the schedule spans both sides of gamma
    expected = torch.where(snr > 5, 5 / snr, torch.ones_like(snr))
    assert torch.allclose(capped.timestep_weights(t).double(), expected, rtol=1e-5)
    assert torch.equal(plain.timestep_weights(t), torch.ones(4))


def test_optimizers_use_the_fused_kernel_on_this_torch() -> None:
    cfg = OmegaConf.load(DEMO / "autoencoder.yaml")
    opt = run.make_module(cfg).configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True  # torch 2.13 on CPU: one kernel, not a per-tensor loop
