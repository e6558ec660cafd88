"""FrozenOpenCLIPEmbedder: the SD 2.x text encoder (OpenCLIP ViT-H/14 text tower), built in our code.

Stability's `ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder` holds an `open_clip` CLIP model
(vision tower deleted) as `model`, so checkpoint keys are `cond_stage_model.model.*`:
`token_embedding`, `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_*,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`, `logit_scale`. This
module rebuilds exactly that tree (no open_clip import, nothing downloaded): pre-norm residual
blocks with exact GELU and a causal mask, then `ln_final` after the chosen layer.

Prompts go through the same A1111 path as SD v1 (`FrozenCLIPEmbedder`): the same BPE vocabulary
and 75-token chunks (`PromptTokenizer.chunks`), textual-inversion vectors and emphasis; the
methods that do that are the v1 encoder's own, shared here (one implementation). Only the
token frame differs: OpenCLIP pads after the first end-of-text token with id 0, as open_clip's
tokenizer and A1111's `FrozenOpenCLIPEmbedderWithCustomWords` do.

Later text encoders (SDXL's second tower) fit the same interface: `encode(prompts, clip_skip)`
-> (B, 77*k, C), `tokenizer` with `.chunks`, `embedding_db`, `token_embedding`, `clip_skip`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .embeddings import EmbeddingDatabase
from .prompt_chunks import PromptTokenizer
from .text_encoder import FrozenCLIPEmbedder
from .tokenizer import EOS_ID, get_tokenizer

if TYPE_CHECKING:
    from .embeddings import Embedding

# OpenCLIP ViT-H-14's text tower (open_clip's model_configs/ViT-H-14.json), which SD 2.x uses.
VIT_H14_TEXT = dict(vocab_size=49408, width=1024, heads=16, layers=24, context_length=77,
                    embed_dim=1024, mlp_ratio=4.0)
PAD_ID = 0  # open_clip pads after the end-of-text token with 0


class ResidualAttentionBlock(nn.Module):
    """open_clip's pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); GELU (exact)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, width), attn_mask (T, T) additive -> (B, T, width)."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """`resblocks`: the stack of ResidualAttentionBlocks."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio)
                                       for _ in range(layers))


class OpenCLIPTextModel(nn.Module):
    """The text half of an open_clip CLIP model, under its attribute names (the checkpoint keys)."""

    def __init__(self, vocab_size: int, width: int, heads: int, layers: int, context_length: int,
                 embed_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))  # CLIP's, stored in SD 2.x files, unused
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @staticmethod
    def causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
        """(n, n) additive mask in like's dtype/device: -inf above the diagonal (a token sees
        itself and earlier ones). Made per call, not a buffer: it is not in checkpoints, and a
        meta-device build would leave a buffer empty."""
        return torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)

    def hidden_state(self, tokens: torch.Tensor, skip: int) -> torch.Tensor:
        """tokens (B, T) -> (B, T, width): ln_final of block `layers - skip`'s output (1 = last)."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]].to(
            self.token_embedding.weight.dtype)
        mask = self.causal_mask(tokens.shape[1], x)
        for block in self.transformer.resblocks[: len(self.transformer.resblocks) - skip + 1]:
            x = block(x, mask)
        return self.ln_final(x)


class FrozenOpenCLIPEmbedder(nn.Module):
    """Prompt strings -> (B, 77*k, width) embeddings: SD 2.x's cond_stage_model.

    Stability's parameters: arch, version and device are accepted and ignored (nothing is
    downloaded); `layer` "last" or "penultimate" (SD 2.x configs say penultimate) sets the
    default clip skip (1 or 2). `config` overrides fields of VIT_H14_TEXT (tiny test models).
    A1111 ignores its clip-skip setting for SD 2.x (always the config's layer); here
    `encode(..., clip_skip=N)` takes the N-th block output from the end, as for SD v1.
    """

    # One implementation of A1111's chunking, textual inversion and emphasis: the v1 encoder's.
    _embedding_vectors = FrozenCLIPEmbedder._embedding_vectors
    encode_chunks = FrozenCLIPEmbedder.encode_chunks
    encode = FrozenCLIPEmbedder.encode
    forward = FrozenCLIPEmbedder.forward
    check_clip_skip = FrozenCLIPEmbedder.check_clip_skip

    def __init__(self, arch: str = "ViT-H-14", version: str = "laion2b_s32b_b79k",
                 device: str = "cpu", max_length: int = 77, freeze: bool = True,
                 layer: str = "last", config: dict | None = None) -> None:
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        self.model = OpenCLIPTextModel(**{**VIT_H14_TEXT, **(config or {})})
        self.embedding_db = EmbeddingDatabase()
        self.tokenizer = PromptTokenizer(get_tokenizer(), self.embedding_db)
        self.max_length = max_length
        self.clip_skip = 2 if layer == "penultimate" else 1
        self.native_clip_skip = self.clip_skip  # the family's own layer (SD 2.x: penultimate)
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        """Eval mode, no gradients (SD's text encoder is frozen)."""
        self.model.eval()
        self.requires_grad_(False)

    @property
    def num_layers(self) -> int:
        """Transformer blocks of the text tower (24 for SD 2.x)."""
        return len(self.model.transformer.resblocks)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token embedding table (vocabulary, width)."""
        return self.model.token_embedding

    def tokenize(self, text: str | list[str]) -> torch.Tensor:
        """Prompt(s) -> (B, 77) plain ids (no syntax, truncated), padded with 0 as open_clip does."""
        return pad_after_eos(self.tokenizer(text, max_length=self.max_length))

    def encode_tokens(self, tokens: torch.Tensor, clip_skip: int | None = None,
                      fixes: Sequence[Sequence[tuple[int, Embedding]]] = ()) -> torch.Tensor:
        """(B, 77) ids framed as SD v1's (EOS padding) -> (B, 77, width) embeddings.

        The padding after the first EOS becomes 0 (open_clip's frame). clip_skip (default
        self.clip_skip): N = the output of the N-th block from the end, then ln_final.
        fixes[b]: (content offset, embedding) whose vectors replace row b's token embeddings.
        """
        skip = self.clip_skip if clip_skip is None else self.check_clip_skip(clip_skip)
        tokens = pad_after_eos(tokens.to(self.token_embedding.weight.device))
        with self._embedding_vectors(fixes):
            return self.model.hidden_state(tokens, skip)


def pad_after_eos(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) ids with every id after each row's first EOS set to PAD_ID (A1111's SD 2.x rule)."""
    is_eos = tokens == EOS_ID
    after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return tokens.masked_fill(after, PAD_ID)
