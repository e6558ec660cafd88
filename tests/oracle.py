"""diffusers / transformers models holding the same weights as ours (test-only oracle).

The conversion is diffusers' own LDM -> diffusers code (diffusers.loaders.single_file_utils),
so a key-mapping mistake on our side cannot be mirrored by the oracle.
"""

from __future__ import annotations

import gzip
import importlib.resources

from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from omegaconf import OmegaConf
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from pww_ldm.models.text_encoder import VIT_L14_TEXT


def _original_config(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def diffusers_unet(cfg, state_dict: dict) -> UNet2DConditionModel:
    """UNet2DConditionModel with the UNet weights of an LDM state_dict."""
    original = _original_config(cfg)
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, state_dict)
    unet = UNet2DConditionModel(**unet_cfg)
    converted = sfu.convert_ldm_unet_checkpoint(dict(state_dict), unet_cfg)
    unet.load_state_dict(converted, strict=True)
    return unet.eval()


def diffusers_vae(cfg, state_dict: dict) -> DiffusersVAE:
    """diffusers AutoencoderKL with the first-stage weights of an LDM state_dict."""
    original = _original_config(cfg)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, state_dict)
    vae = DiffusersVAE(**vae_cfg)
    vae_sd = {k[len("first_stage_model."):]: v for k, v in state_dict.items()
              if k.startswith("first_stage_model.")}
    converted = sfu.convert_ldm_vae_checkpoint(vae_sd, vae_cfg)
    vae.load_state_dict(converted, strict=True)
    return vae.eval()


def transformers_clip(state_dict: dict, config: dict | None = None) -> CLIPTextModel:
    """transformers' CLIPTextModel with the text-encoder weights of an LDM state_dict."""
    text_cfg = CLIPTextConfig(**{**VIT_L14_TEXT, **(config or {})})
    model = CLIPTextModel(text_cfg)
    converted = sfu.convert_ldm_clip_checkpoint(dict(state_dict))
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
    if not hasattr(model, "text_model"):  # transformers >= 5 flattened the module tree
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    model.load_state_dict(converted, strict=False)
    missing = set(model.state_dict()) - set(converted) - {"embeddings.position_ids",
                                                          "text_model.embeddings.position_ids"}
    assert not missing, missing
    return model.eval()


def transformers_tokenizer() -> CLIPTokenizer:
    """transformers' CLIPTokenizer over our shipped BPE merges, its vocabulary built by the
    NOTICE.md rule independently of our build_vocab (bytes, bytes + </w>, merges, BOS, EOS)."""
    gz = importlib.resources.files("pww_ldm").joinpath("data/clip/bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(gz.read_bytes()).decode("utf-8").split("\n")[1 : 48894 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab = {s: i for i, s in enumerate(symbols + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def clip_encoder_and_oracle(config: dict, seed: int):
    """Our FrozenCLIPEmbedder with random weights and transformers' CLIPTextModel holding them."""
    from tiny import randomize_

    from pww_ldm.models.text_encoder import FrozenCLIPEmbedder

    encoder = randomize_(FrozenCLIPEmbedder(config=config), seed=seed)
    state = {"cond_stage_model." + k: v for k, v in encoder.state_dict().items()}
    return encoder, transformers_clip(state, config)
