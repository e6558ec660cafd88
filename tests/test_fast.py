"""The opt-in fast path (inductor + weight freezing) computes what the eager model computes, the
switch reaches it from load_model, the CLI and the batch runner, the UNet with Paint-with-Words is
one graph for the compiler, and `--precision auto` decides from the CPU flags."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model

import pww_ldm
from pww_ldm import cli
from pww_ldm.conditioning import UNetContext
from pww_ldm.fast import auto_precision, disable_fast, enable_fast, is_fast
from pww_ldm.region import PaintWithWords, RegionContext

# The flags lines of real CPUs (abridged): Zen 4 / Sapphire Rapids have native bf16, Skylake not.
ZEN4 = "fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni".split()
SAPPHIRE_RAPIDS = "avx2 avx512f amx_bf16 amx_tile amx_int8".split()
SKYLAKE = "avx2 avx512f avx512bw avx512vl".split()


@pytest.mark.parametrize(("flags", "expected"), [(ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"),
                                                 (SKYLAKE, "fp32"), ([], "fp32")])
def test_auto_precision_takes_bf16_only_with_native_bf16(flags, expected):
    name, reason = auto_precision("cpu", flags)
    assert name == expected
    assert ("native bf16" in reason) and (("lacks" in reason) == (expected == "fp32"))


def test_auto_precision_on_cuda_is_fp16_whatever_the_cpu():
    assert auto_precision("cuda", ZEN4)[0] == "fp16"


def attention_heavy_model():
    """The tiny model with its cross-attention scaled up: random tiny weights leave the region
    bias a 1e-6 effect on eps, too small to tell a fast path that dropped it."""
    model = tiny_model(seed=4)
    with torch.no_grad():
        for name, module in model.model.diffusion_model.named_modules():
            if name.endswith(("attn2.to_q", "attn2.to_k")):
                module.weight.mul_(10)
            elif name.endswith("attn2.to_out.0"):
                module.weight.mul_(30)
    return model


def region_call(model, latent=(6, 8)):
    """A CFG call's inputs with Paint-with-Words on the conditional row: x, t, UNetContext."""
    h, w = latent
    arr = np.zeros((h * 8, w * 8, 3), np.uint8)
    arr[5:30, 3:40] = (255, 0, 0)
    regions = RegionContext.build("a cat on grass", Image.fromarray(arr), {"#ff0000": "cat,2"},
                                  width=w * 8, height=h * 8, tokenizer=model.cond_stage_model.tokenizer)
    regions.prepare(model.attention_grids(h, w), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        emb = model.get_learned_conditioning(["", "a cat on grass"])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, h, w, generator=g).repeat(2, 1, 1, 1)  # a CFG batch: [x; x]
    context = UNetContext(emb, torch.full((2,), 3.0), (PaintWithWords(regions),), cond_rows=slice(1, 2))
    return x, torch.full((2,), 600.0), context


@pytest.mark.slow
def test_fast_unet_matches_eager_with_paint_with_words_on():
    model = attention_heavy_model()
    x, t, context = region_call(model)
    unet = model.model.diffusion_model
    with torch.inference_mode():
        eager_eps, plain_eps = unet(x, t, context), unet(x, t, context.embeddings)
    assert (eager_eps - plain_eps)[1].abs().max() > 1e-2  # the region bias is really in the call
    enable_fast(model)
    with torch.inference_mode():
        fast_eps = unet(x, t, context)
    assert is_fast(model) and unet._compiled_call_impl is not None
    assert (fast_eps - eager_eps).abs().max() <= 1e-3
    disable_fast(model)
    assert not is_fast(model) and unet._compiled_call_impl is None


def test_load_model_fast_compiles_the_unet_only():
    model = pww_ldm.load_model("models/pww-demo/model.safetensors", device="cpu", fast=True)
    assert is_fast(model)
    assert model.model.diffusion_model._compiled_call_impl is not None
    assert model.first_stage_model.decoder._compiled_call_impl is None  # measured no faster
    plain = pww_ldm.load_model("models/pww-demo/model.safetensors", device="cpu")
    assert not is_fast(plain) and plain.model.diffusion_model._compiled_call_impl is None


def test_cli_fast_flag_reaches_load_model(monkeypatch, tmp_path):
    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before generating: only the call matters here

    monkeypatch.setattr(pww_ldm, "load_model", fake_load)
    with pytest.raises(SystemExit):
        cli.main(["--fast", "--outdir", str(tmp_path), "--steps", "1"])  # the demo model
    assert seen.get("fast") is True


@pytest.mark.parametrize(("flags", "expected"), [(ZEN4, "bf16"), (SKYLAKE, "fp32")])
def test_cli_precision_auto_decides_from_the_cpu_flags_and_says_so(monkeypatch, capsys, flags, expected):
    import argparse

    import pww_ldm.fast

    monkeypatch.setattr(pww_ldm.fast, "cpu_flags", lambda: set(flags))
    assert cli._precisions(argparse.Namespace(precision="auto", device="cpu"))[0] == expected
    assert f": {expected}" in capsys.readouterr().out


def test_batch_fast_flag_reaches_the_model_load(tmp_path):
    from pww_ldm.batch.module import BatchGenerator
    from pww_ldm.batch.run import build_parser

    args = build_parser().parse_args(["--jobs", "jobs.jsonl", "--fast"])
    assert args.fast and not build_parser().parse_args(["--jobs", "jobs.jsonl"]).fast
    module = BatchGenerator([], "models/pww-demo/model.safetensors", tmp_path, fast=args.fast)
    assert module.load_options["fast"] is True  # what setup() hands to load_model


@pytest.mark.slow
def test_unet_with_paint_with_words_is_one_graph_for_the_compiler():
    # graph breaks would split the compiled (fast / --compile / CUDA-graph) UNet into pieces
    # with Python between them; explain traces with dynamo only (no inductor compile)
    model = tiny_model(seed=4)
    x, t, context = region_call(model)
    with torch.no_grad():
        report = torch._dynamo.explain(model.model.diffusion_model)(x, t, context)
    assert report.graph_break_count == 0, report.break_reasons
    assert report.graph_count == 1
