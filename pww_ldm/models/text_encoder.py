"""FrozenCLIPEmbedder: the SD v1 text encoder, built with no download.

The CLIP ViT-L/14 text transformer comes from `transformers.CLIPTextModel` built from an
in-code config (never `from_pretrained`), and the tokenizer is our own BPE over the bundled
vocabulary. Keys are `cond_stage_model.transformer.text_model.*` as in real checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import get_tokenizer

# CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14), which SD v1 uses.
VIT_L14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                    hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
                    bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


class _TextModelHolder(nn.Module):
    """Gives the text transformer the `text_model.` key prefix on every transformers version.

    transformers 4.x nests the transformer as CLIPTextModel.text_model; 5.x flattened it. SD
    checkpoints use the nested names, so the flattened model is held under `text_model`.
    """

    def __init__(self, model: CLIPTextModel) -> None:
        super().__init__()
        self.text_model = model.text_model if hasattr(model, "text_model") else model
        self._model = [model]  # a list hides it from state_dict: its keys live under text_model

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> Any:
        """input_ids (B, 77) -> transformers' output with last_hidden_state (B, 77, hidden)."""
        return self._model[0](input_ids=input_ids, output_hidden_states=output_hidden_states)


class FrozenCLIPEmbedder(nn.Module):
    """Prompt strings -> (B, 77, hidden) embeddings, CompVis's cond_stage_model.

    version and device are accepted for CompVis config compatibility and ignored: nothing is
    downloaded. `config` overrides fields of the ViT-L/14 text config (tiny test/demo models);
    `layer`: "last" (SD v1) or "penultimate"; `clip_skip` = 2 is A1111's name for penultimate.
    """

    def __init__(self, version: str = "openai/clip-vit-large-patch14", device: str = "cpu",
                 max_length: int = 77, freeze: bool = True, layer: str = "last",
                 config: dict | None = None, clip_skip: int = 1) -> None:
        super().__init__()
        text_config = CLIPTextConfig(**{**VIT_L14_TEXT, **(config or {})})
        text_config._attn_implementation = "sdpa"
        self.transformer = _TextModelHolder(CLIPTextModel(text_config))
        self.tokenizer = get_tokenizer()
        self.max_length = max_length
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        self.clip_skip = 2 if layer == "penultimate" else clip_skip
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        """Eval mode, no gradients (SD's text encoder is frozen)."""
        self.transformer.eval()
        for p in self.parameters():
            p.requires_grad = False

    def tokenize(self, text: str | list[str]) -> torch.Tensor:
        """Prompt(s) -> (B, 77) token ids, padded with 49407 as SD v1."""
        return self.tokenizer(text, max_length=self.max_length)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, hidden) embeddings."""
        device = self.transformer.text_model.embeddings.token_embedding.weight.device
        out = self.transformer(tokens.to(device), output_hidden_states=self.clip_skip > 1)
        if self.clip_skip == 1:
            return out.last_hidden_state
        hidden = out.hidden_states[-self.clip_skip]
        return self.transformer.text_model.final_layer_norm(hidden)

    def forward(self, text: str | list[str]) -> torch.Tensor:
        """Prompt(s) -> (B, 77, hidden)."""
        return self.encode_tokens(self.tokenize(text))

    def encode(self, text: str | list[str]) -> torch.Tensor:
        """CompVis alias of forward."""
        return self(text)
