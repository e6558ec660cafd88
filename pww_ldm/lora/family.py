"""What a LoRA file was made for, from its keys and widths, to say why it does not fit a model."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# Cross-attention context width / text-encoder width -> model family.
_CONTEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_TEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL (second text encoder)"}
_SDXL_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.", "label_emb", "add_embedding")
_FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks", "lora_transformer_")


def _down_width(tensors: Mapping[str, torch.Tensor], needles: tuple[str, ...]) -> int | None:
    for key, value in tensors.items():
        down = "lora_down" in key or "lora_A" in key or ".down." in key
        if down and any(n in key for n in needles) and value.dim() >= 2:
            return int(value.shape[1])
    return None


def foreign_family(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """"an SDXL LoRA (keys like ...)" / "a Flux / DiT LoRA (...)" when its keys say so, else None.

    This engine runs SD 1.x / 2.x only, so such a file never fits, even where some of its block
    names and shapes happen to equal ours (SDXL's 640-wide self-attention at input_blocks.4).
    """
    for markers, what in ((_SDXL_MARKERS, "an SDXL LoRA"), (_FLUX_MARKERS, "a Flux / DiT LoRA")):
        hit = next((k for k in tensors if any(m in k for m in markers)), None)
        if hit is not None:
            return f"{what} (keys like {hit})"
    return None


def describe_lora(tensors: Mapping[str, torch.Tensor]) -> str:
    """A phrase naming the family a LoRA state_dict looks made for, with the evidence.

    E.g. "an SDXL LoRA (keys like lora_te1_...)", "a LoRA for SD 2.x (cross-attention width 1024)".
    """
    foreign = foreign_family(tensors)
    if foreign is not None:
        return foreign
    width = _down_width(tensors, ("attn2_to_k", "attn2.to_k", "attn2_to_v", "attn2.to_v",
                                  "attn2.processor.to_k"))
    if width is not None:
        family = _CONTEXT_WIDTHS.get(width, "an unknown model")
        return f"a LoRA for {family} (cross-attention width {width})"
    width = _down_width(tensors, ("q_proj", "self_attn_q", "self_attn.to_q"))
    if width is not None:
        family = _TEXT_WIDTHS.get(width, "an unknown model")
        return f"a LoRA for {family} (text-encoder width {width})"
    return "a LoRA of an unknown layout"


def describe_model(model: nn.Module) -> str:
    """A phrase naming our model's widths, e.g. "this SD 1.x model (cross-attention width 768)"."""
    context = next((m.in_features for name, m in model.model.diffusion_model.named_modules()
                    if name.endswith("attn2.to_k") and isinstance(m, nn.Linear)), None)
    family = _CONTEXT_WIDTHS.get(context, "SD-like") if context is not None else "SD-like"
    return f"this {family} model (cross-attention width {context})"
