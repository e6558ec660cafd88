"""LoRA merging against diffusers' load_lora_weights + fuse_lora on the same converted weights,
exact removal, the kohya/CompVis/diffusers key spellings, and refusals of LoRAs that do not fit."""

import warnings

import pytest
import torch
from lora_files import kohya_lora, lora_pair, write
from oracle import diffusers_unet, transformers_clip
from tiny import TINY_CLIP, tiny_config, tiny_model

from pww_ldm.checkpoint import UnsafeCheckpointError
from pww_ldm.lora import (
    LoraError,
    LoraFormatError,
    LoraMismatchError,
    LoraNotFoundError,
    UnmatchedLoraKeysWarning,
    apply_lora,
)
from pww_ldm.lora.keys import unet_block_table, unet_diffusers_name

SCALE, TOL = 0.7, 1e-4


def _inputs():
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    return x, torch.tensor([999.0, 17.0]), ctx, torch.randint(0, 49408, (2, 77), generator=g)


def _outputs(model):
    x, t, ctx, ids = _inputs()
    with torch.no_grad():
        text = model.cond_stage_model.transformer(input_ids=ids).last_hidden_state
        return model.apply_model(x, t, ctx), text


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_bits(model, before):
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) and v.dtype == after[k].dtype for k, v in before.items())


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """Our tiny model, the kohya file, a diffusers-format copy, and diffusers' fused outputs."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    model, root = tiny_model(seed=3), tmp_path_factory.mktemp("lora")
    sd = model.state_dict()
    unet, text = diffusers_unet(tiny_config(), sd), transformers_clip(sd, TINY_CLIP)
    kohya = write(kohya_lora(unet, text), root / "style.safetensors")
    pipe = StableDiffusionPipeline(vae=None, text_encoder=text, tokenizer=None, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(str(kohya), adapter_name="a")
        pipe.save_lora_weights(
            root / "diffusers", unet_lora_layers=get_peft_model_state_dict(unet, adapter_name="a"),
            text_encoder_lora_layers=get_peft_model_state_dict(text, adapter_name="a"),
            unet_lora_adapter_metadata=unet.peft_config["a"].to_dict(),
            text_encoder_lora_adapter_metadata=text.peft_config["a"].to_dict())
        pipe.fuse_lora(lora_scale=SCALE)
    x, t, ctx, ids = _inputs()
    with torch.no_grad():
        fused = unet(x, t, encoder_hidden_states=ctx).sample, text(input_ids=ids).last_hidden_state
    return model, kohya, root / "diffusers" / "pytorch_lora_weights.safetensors", fused


@pytest.mark.parametrize("which", ["kohya", "diffusers"])
def test_lora_matches_diffusers_fuse(oracle, which):
    model, kohya, diffusers_file, (unet_out, text_out) = oracle
    base_unet, base_text = _outputs(model)
    before = _weights(model)
    handle = apply_lora(model, kohya if which == "kohya" else diffusers_file, SCALE)
    try:
        ours_unet, ours_text = _outputs(model)
        assert len(handle.lora.layers) == 131 and handle.lora.unmatched == ()
        assert (ours_unet - unet_out).abs().max().item() < TOL
        assert (ours_text - text_out).abs().max().item() < TOL
        # the LoRA matters: the check above could fail
        assert (ours_unet - base_unet).abs().max().item() > 100 * TOL
        assert (ours_text - base_text).abs().max().item() > 100 * TOL
    finally:
        handle.remove()
    _assert_bits(model, before)


def test_remove_restores_exact_bits_in_any_order(oracle, tmp_path):
    model, kohya, _, _ = oracle
    before = _weights(model)
    other = write(kohya_lora(*_oracle_modules(model), seed=5, alpha=None), tmp_path / "b.safetensors")
    only_b = apply_lora(model, other, -0.4)
    weights_b = _weights(model)
    only_b.remove()
    _assert_bits(model, before)
    a, b = apply_lora(model, kohya, 1.0), apply_lora(model, other, -0.4)
    assert model.state_dict().keys() == before.keys()
    a.remove()  # the first one out: what is left equals B alone, bit for bit
    _assert_bits(model, weights_b)
    b.remove()
    b.remove()  # idempotent
    _assert_bits(model, before)


def _oracle_modules(model):
    sd = model.state_dict()
    return diffusers_unet(tiny_config(), sd), transformers_clip(sd, TINY_CLIP)


def test_scale_is_alpha_over_rank_per_layer(tmp_path):
    # By hand from the LoRA definition: y = W x + w * alpha / r * up(down(x)), for a linear
    # layer and a 3x3 conv (LoCon), run as two layers rather than as a merged weight.
    model, g = tiny_model(seed=4), torch.Generator().manual_seed(1)
    unet = model.model.diffusion_model
    linear = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k
    conv = unet.input_blocks[1][0].in_layers[2]
    (ld, lu), (cd, cu) = lora_pair(linear, 4, g), lora_pair(conv, 3, g)
    lk = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    ck = "lora_unet_down_blocks_0_resnets_0_conv1"
    path = write({f"{lk}.lora_down.weight": ld, f"{lk}.lora_up.weight": lu, f"{lk}.alpha": torch.tensor(3.0),
                  f"{ck}.lora_down.weight": cd, f"{ck}.lora_up.weight": cu},  # no alpha: scale 1
                 tmp_path / "two.safetensors")
    xl, xc = torch.randn(5, linear.in_features, generator=g), torch.randn(1, 32, 6, 6, generator=g)
    with torch.no_grad():
        want_l = linear(xl) + 0.5 * 3.0 / 4 * (xl @ ld.T @ lu.T)
        low = torch.nn.functional.conv2d(xc, cd, padding=1)
        want_c = conv(xc) + 0.5 * torch.nn.functional.conv2d(low, cu)
        with apply_lora(model, path, 0.5):
            torch.testing.assert_close(linear(xl), want_l, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(conv(xc), want_c, rtol=1e-5, atol=1e-6)


def test_compvis_and_diffusers_spellings_hit_the_same_layer(tmp_path):
    model, g = tiny_model(seed=4), torch.Generator().manual_seed(2)
    down, up = lora_pair(model.model.diffusion_model.output_blocks[1][2].conv, 2, g)
    merged = []
    for key in ("lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_1_2_conv"):
        path = write({key + ".lora_down.weight": down, key + ".lora_up.weight": up}, tmp_path / f"{key}.pt")
        with apply_lora(model, path):
            merged.append(model.model.diffusion_model.output_blocks[1][2].conv.weight.clone())
    assert torch.equal(merged[0], merged[1])


@pytest.mark.parametrize("unet_params", [
    {},  # the full SD v1 UNet (built on the meta device)
    {"model_channels": 32, "channel_mult": [1, 2], "attention_resolutions": [1, 2], "num_res_blocks": 1},
    {"model_channels": 32, "channel_mult": [1, 2, 2], "attention_resolutions": [2], "num_res_blocks": 2},
])
def test_unet_mapping_equals_diffusers_conversion(unet_params):
    # diffusers' own LDM -> diffusers conversion renames every weight; tag each weight with its
    # index and read back where it went.
    from diffusers.loaders import single_file_utils as sfu
    from omegaconf import OmegaConf

    from pww_ldm.config import instantiate_from_config
    from pww_ldm.loading import default_v1_config

    cfg = default_v1_config()
    cfg.model.params.unet_config.params.update(unet_params)
    with torch.device("meta"):
        unet = instantiate_from_config(cfg.model.params.unet_config)
    ours = list(unet.state_dict())
    tagged = {"model.diffusion_model." + k: torch.tensor([float(i)]) for i, k in enumerate(ours)}
    original = OmegaConf.to_container(cfg, resolve=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size is deprecated; tags have no shape to read it from
        config = sfu.create_unet_diffusers_config_from_ldm(original, tagged, image_size=64)
    theirs = {int(v.item()): k for k, v in sfu.convert_ldm_unet_checkpoint(tagged, config).items()}
    table = unet_block_table(unet)
    assert len(theirs) == len(ours)
    for i, key in enumerate(ours):
        module, _, param = key.rpartition(".")
        assert f"{unet_diffusers_name(module, table)}.{param}" == theirs[i], key


# ---------------------------------------------------------------- refusals


def _sdxl_like(g):
    # SDXL's kohya keys use CompVis block names, which SD 1.x shares; its context is 2048 wide.
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    return {key + ".lora_down.weight": torch.randn(4, 2048, generator=g),
            key + ".lora_up.weight": torch.randn(32, 4, generator=g)}


@pytest.mark.parametrize("case, match", [
    ("sdxl_te", r"SDXL LoRA \(keys like lora_te1_.*SD 1.x / 2.x LoRAs only"),
    ("sdxl_width", r"SDXL \(cross-attention width 2048\).*SD-like model \(cross-attention width 32\)"),
    ("nothing", r"none of its 1 layers names a layer"),
])
def test_lora_for_another_model_is_refused(tmp_path, case, match):
    model, g = tiny_model(seed=4), torch.Generator().manual_seed(0)
    tensors = _sdxl_like(g)
    if case == "sdxl_te":  # its UNet part fits this model's shapes: the lora_te1_ keys refuse it
        fits = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
        tensors = {fits + ".lora_down.weight": torch.randn(4, 32),
                   fits + ".lora_up.weight": torch.randn(32, 4)}
        key = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
        tensors[key + ".lora_down.weight"] = torch.randn(4, 768)
        tensors[key + ".lora_up.weight"] = torch.randn(768, 4)
    if case == "nothing":
        tensors = {"lora_unet_no_such_layer.lora_down.weight": torch.randn(4, 32),
                   "lora_unet_no_such_layer.lora_up.weight": torch.randn(32, 4)}
    before = _weights(model)
    with pytest.raises(LoraMismatchError, match=match):
        apply_lora(model, write(tensors, tmp_path / "x.safetensors"))
    _assert_bits(model, before)  # refused before any weight changed


def test_unmatched_keys_warn_and_the_rest_applies(tmp_path):
    model, g = tiny_model(seed=4), torch.Generator().manual_seed(0)
    conv = model.model.diffusion_model.out[2]
    down, up = lora_pair(conv, 2, g)
    tensors = {"lora_unet_conv_out.lora_down.weight": down, "lora_unet_conv_out.lora_up.weight": up,
               "lora_unet_extra_thing.lora_down.weight": torch.randn(2, 8),
               "lora_unet_extra_thing.lora_up.weight": torch.randn(8, 2)}
    before = conv.weight.clone()
    with pytest.warns(UnmatchedLoraKeysWarning, match="lora_unet_extra_thing"):
        handle = apply_lora(model, write(tensors, tmp_path / "part.safetensors"))
    assert handle.lora.unmatched == ("lora_unet_extra_thing",) and not torch.equal(conv.weight, before)


class _Boom:
    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    boom = _Boom()
    boom.path = str(tmp_path / "pwned")
    torch.save({"lora_unet_conv_out.lora_down.weight": torch.zeros(1), "x": boom}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle"):
        apply_lora(tiny_model(seed=4), tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("tensors, error, match", [
    ({"lora_unet_conv_out.hada_w1_a": torch.zeros(2, 2)}, LoraFormatError, "LoHa"),
    ({"model.diffusion_model.out.2.weight": torch.zeros(2, 2)}, LoraFormatError, "no LoRA keys"),
])
def test_files_that_are_not_plain_lora(tmp_path, tensors, error, match):
    with pytest.raises(error, match=match):
        apply_lora(tiny_model(seed=4), write(tensors, tmp_path / "f.safetensors"))


def test_missing_file_and_bad_weight(tmp_path):
    model = tiny_model(seed=4)
    with pytest.raises(LoraNotFoundError, match="does not exist"):
        apply_lora(model, tmp_path / "nope.safetensors")
    with pytest.raises(LoraError, match="number"):
        apply_lora(model, tmp_path / "nope.safetensors", float("nan"))


class _OpenClipBlock(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)


def _sd2_like(width=32):
    # SD 2.x's text encoder under Stability's OpenCLIP names (the checkpoint contract): resblocks.N
    # .attn.in_proj_weight, .attn.out_proj, .mlp.c_fc, .mlp.c_proj under cond_stage_model.model.transformer
    model = tiny_model(seed=4)
    text = torch.nn.Module()
    text.model = torch.nn.Module()
    text.model.transformer = torch.nn.Module()
    text.model.transformer.resblocks = torch.nn.ModuleList([_OpenClipBlock(width) for _ in range(2)])
    model.cond_stage_model = text
    return model


def test_sd2_text_lora_lands_in_openclip_rows(tmp_path):
    # A1111's SD 2.x mapping: q/k/v_proj update row blocks of in_proj_weight, fc1 -> c_fc.
    model, g = _sd2_like(), torch.Generator().manual_seed(3)
    block = model.cond_stage_model.model.transformer.resblocks[1]
    tensors, pairs = {}, {}
    for name in ("q_proj", "v_proj", "out_proj", "fc1"):
        module = torch.nn.Linear(32, 128) if name == "fc1" else torch.nn.Linear(32, 32)
        pairs[name] = lora_pair(module, 2, g)
        part = "mlp" if name == "fc1" else "self_attn"
        key = f"lora_te_text_model_encoder_layers_1_{part}_{name}"
        tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = pairs[name]
    before, x = _weights(model), torch.randn(3, 32, generator=g)
    w = block.attn.in_proj_weight.detach().clone()
    with torch.no_grad():
        want_q = x @ w[:32].T + (x @ pairs["q_proj"][0].T) @ pairs["q_proj"][1].T
        want_k = x @ w[32:64].T  # no k_proj LoRA: the k rows stay
        want_v = x @ w[64:].T + (x @ pairs["v_proj"][0].T) @ pairs["v_proj"][1].T
        want_fc = block.mlp.c_fc(x) + (x @ pairs["fc1"][0].T) @ pairs["fc1"][1].T
        with apply_lora(model, write(tensors, tmp_path / "sd2.safetensors")) as handle:
            assert len(handle.lora.layers) == 4
            merged = block.attn.in_proj_weight
            torch.testing.assert_close(x @ merged[:32].T, want_q, rtol=1e-5, atol=1e-6)
            assert torch.equal(x @ merged[32:64].T, want_k)
            torch.testing.assert_close(x @ merged[64:].T, want_v, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(block.mlp.c_fc(x), want_fc, rtol=1e-5, atol=1e-6)
    _assert_bits(model, before)


def test_bfloat16_model_merges_in_float32_and_restores_bits(tmp_path):
    model, g = tiny_model(seed=4).to(torch.bfloat16), torch.Generator().manual_seed(6)
    conv = model.model.diffusion_model.input_blocks[1][0].in_layers[2]
    down, up = lora_pair(conv, 3, g)
    key = "lora_unet_down_blocks_0_resnets_0_conv1"
    path = write({f"{key}.lora_down.weight": down.half(), f"{key}.lora_up.weight": up.half(),
                  f"{key}.alpha": torch.tensor(1.5)}, tmp_path / "half.safetensors")
    before = _weights(model)
    # by hand: sum over the rank of up[o, r] * down[r, i, y, x] in float32; one rounding to bf16
    delta = (up.half().float().flatten(1)[:, :, None, None, None] * down.half().float()[None]).sum(1)
    want = before["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"].float() + 0.9 * 1.5 / 3 * delta
    with apply_lora(model, path, 0.9):
        assert conv.weight.dtype == torch.bfloat16
        torch.testing.assert_close(conv.weight.float(), want, rtol=2**-8, atol=1e-7)
    _assert_bits(model, before)
