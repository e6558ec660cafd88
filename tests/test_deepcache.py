"""DeepCache-style feature caching: the cached call against a hand composition of the shallow
blocks on the kept feature, the refresh interval, CFG batches, a fresh cache per generation, off
bit for bit, and Paint-with-Words (and ToMe) with it on, on the demo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from demo_regions import demo_model, region_ious
from tiny import tiny_model

import pww_ldm
from pww_ldm.approx import Approximations, ApproxRun
from pww_ldm.conditioning import UNetContext
from pww_ldm.models.unet import timestep_embedding
from pww_ldm.samplers.denoiser import CFGEpsModel

KW = dict(steps=4, seed=2, progress=False, width=64, height=64)
PROMPT = "a cat and a dog"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def unet_inputs(model, seed: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.rand(n, generator=g) * 999
    text = torch.randn(n, 77, 32, generator=g)
    return x, t, text


def context(text: torch.Tensor, run: ApproxRun | None) -> UNetContext:
    return UNetContext(text, torch.ones(text.shape[0]), approx=run)


def test_full_call_is_exact_and_keeps_the_feature_entering_the_branch_output_block(model):
    unet = model.model.diffusion_model
    x, t, text = unet_inputs(model, 0)
    seen = {}
    # the tiny UNet: 4 input and 4 output blocks; branch 1 pairs input block 1 with output block 2
    hooks = [unet.output_blocks[2].register_forward_pre_hook(lambda m, args: seen.update(entering=args[0])),
             unet.input_blocks[1].register_forward_hook(lambda m, args, out: seen.update(skip=out))]
    with torch.no_grad():
        exact = unet(x, t, context(text, None))
        run = ApproxRun(Approximations(deepcache=3, deepcache_branch=1))
        full = unet(x, t, context(text, run))
    for hook in hooks:
        hook.remove()
    assert torch.equal(full, exact)  # the refresh call is the exact UNet, bit for bit
    # output block 2's input is [deep feature; skip of input block 1]
    deep, skip = seen["entering"].split([run.kept.shape[1], seen["skip"].shape[1]], dim=1)
    assert torch.equal(skip, seen["skip"]) and torch.equal(run.kept, deep)


def _emb(unet, t: torch.Tensor) -> torch.Tensor:
    return unet.time_embed(timestep_embedding(t, unet.model_channels))


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_cached_call_is_the_shallow_blocks_on_the_kept_feature(model, branch):
    unet = model.model.diffusion_model
    x0, t0, text0 = unet_inputs(model, 1)
    x1, t1, text1 = unet_inputs(model, 2)
    run = ApproxRun(Approximations(deepcache=2, deepcache_branch=branch))
    with torch.no_grad():
        unet(x0, t0, context(text0, run))
        deep = run.kept.clone()
        cached = unet(x1, t1, context(text1, run))
        # by hand: input blocks 0..branch, then the output blocks paired with them on `deep`
        emb, ctx = _emb(unet, t1), context(text1, None)
        skips, h = [], x1
        for k in range(branch + 1):
            h = unet.input_blocks[k](h, emb, ctx)
            skips.append(h)
        h = deep
        for k in range(branch, -1, -1):  # output block 3 - k consumes input block k's skip
            grid = skips[k - 1].shape[-2:] if k else None
            h = unet.output_blocks[3 - k](torch.cat([h, skips[k]], 1), emb, ctx, upsample_size=grid)
        expected = unet.out(h)
    assert torch.equal(cached, expected)
    assert torch.equal(run.kept, deep)  # a cached call does not replace the kept feature


def test_refresh_every_n_calls_and_on_a_new_input_shape(model):
    unet = model.model.diffusion_model
    state = {"call": 0, "full": []}
    hook = unet.middle_block.register_forward_hook(lambda *a: state["full"].append(state["call"]))
    run = ApproxRun(Approximations(deepcache=3))
    x, t, text = unet_inputs(model, 3)
    with torch.no_grad():
        for call in range(8):
            state["call"] = call
            if call < 7:
                unet(x, t, context(text, run))
            else:  # call 7 would be a cached one: a batch of another shape refreshes instead
                unet(x[:1], t[:1], context(text[:1], run))
    hook.remove()
    assert state["full"] == [0, 3, 6, 7]


def test_cfg_batch_keeps_both_halves(model):
    eps = CFGEpsModel(model, Approximations(deepcache=2))
    x = torch.randn(1, 4, 8, 8)
    cond, uncond = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    with torch.no_grad():
        eps(x, torch.tensor([500.0]), torch.tensor([3.0]), cond=cond, uncond=uncond, guidance_scale=7.5)
    assert eps.approx_run.kept.shape[0] == 2  # [uncond; cond] rows, one UNet call
    assert CFGEpsModel(model, Approximations()).approx_run is None  # off: no state at all


def test_off_is_exact_and_each_generation_starts_fresh(model):
    plain = np.asarray(pww_ldm.generate(model, PROMPT, **KW)[0])
    for off in (Approximations(deepcache=0), Approximations(deepcache=1, deepcache_branch=5)):
        assert np.array_equal(plain, np.asarray(pww_ldm.generate(model, PROMPT, approx=off, **KW)[0]))
    approx = Approximations(deepcache=2)
    first = pww_ldm.generate(model, PROMPT, approx=approx, **KW)[0]
    pww_ldm.generate(model, "a red house", approx=approx, **{**KW, "seed": 9})  # another image between
    again = pww_ldm.generate(model, PROMPT, approx=approx, **KW)[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(plain, np.asarray(first))
    assert "DeepCache: 2 (branch 1)" in first.info["parameters"]


def test_a_branch_deeper_than_the_unet_is_refused(model):
    with pytest.raises(ValueError, match="deepcache_branch 4 is too deep.*4 input blocks"):
        pww_ldm.generate(model, PROMPT, approx=Approximations(deepcache=2, deepcache_branch=4), **KW)


@pytest.mark.parametrize("approx", [Approximations(deepcache=2), Approximations(deepcache=3),
                                    Approximations(tome=0.5, deepcache=2)],
                         ids=["deepcache2", "deepcache3", "with_tome"])
def test_paint_with_words_still_places_the_demo_objects(approx):
    plain_iou, pww_iou = region_ious(demo_model(), approx=approx)
    # exact, 8 steps: 0.00 without PwW, 0.45 with it (mean over the 3 objects; the star is missed)
    assert pww_iou > plain_iou + 0.3


def test_script_flags(tmp_path, capsys):
    from PIL import Image

    from pww_ldm.cli import main

    assert main(["--tome", "1.5", "--outdir", str(tmp_path)]) == 2  # refused before the model loads
    assert "tome" in capsys.readouterr().err
    assert main(["--deepcache", "3", "--fast", "--outdir", str(tmp_path)]) == 2
    assert "eager UNet" in capsys.readouterr().err
    assert not tmp_path.joinpath("samples").exists()
    assert main(["--tome", "0.5", "--deepcache", "3", "--steps", "4", "--quiet", "--no-compare",
                 "--outdir", str(tmp_path)]) == 0  # the demo model and its scene
    parameters = Image.open(tmp_path / "samples" / "00000.png").info["parameters"]
    assert "ToMe: 0.5" in parameters and "DeepCache: 3 (branch 1)" in parameters
