"""FrozenCLIPEmbedder: the SD v1 text encoder, built with no download, with A1111's prompt handling.

The CLIP ViT-L/14 text transformer comes from `transformers.CLIPTextModel` built from an
in-code config (never `from_pretrained`), and the tokenizer is our own BPE over the bundled
vocabulary. Keys are `cond_stage_model.transformer.text_model.*` as in real checkpoints.

Prompts are read as A1111 reads them (modules/sd_hijack_clip.py): emphasis syntax, chunks of 75
tokens encoded separately and concatenated to (B, 77*k, C), textual-inversion vectors in place of
their names' token embeddings, emphasis multiplied into the output and the mean restored, and
clip skip (1 = last layer; N = the N-th hidden state from the end, then the final layer norm).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .embeddings import EmbeddingDatabase
from .prompt_chunks import CHUNK_POSITIONS, PromptChunk, PromptTokenizer
from .tokenizer import get_tokenizer

if TYPE_CHECKING:
    from .embeddings import Embedding

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


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: z (B, T, C) times multipliers (B, T), rescaled to z's mean.

    `z * m` then `z * (original_mean / new_mean)`, in float32 as A1111's float32 multipliers
    promote it, cast back to z's dtype. The mean is per row (one prompt's chunk): A1111 encodes
    one prompt per call, so its batch mean is that prompt's mean; per row, a prompt's embedding
    does not depend on what else is in the batch. All-ones multipliers return z itself.
    """
    if bool((multipliers == 1).all()):
        return z
    zf = z.float()
    original_mean = zf.mean(dim=(1, 2), keepdim=True)
    zf = zf * multipliers.to(zf)[..., None]
    return (zf * (original_mean / zf.mean(dim=(1, 2), keepdim=True))).to(z.dtype)


class FrozenCLIPEmbedder(nn.Module):
    """Prompt strings -> (B, 77*k, hidden) embeddings, CompVis's cond_stage_model.

    version and device are accepted for CompVis config compatibility and ignored: nothing is
    downloaded. `config` overrides fields of the ViT-L/14 text config (tiny test/demo models);
    `layer`: "last" (SD v1) or "penultimate"; `clip_skip`: A1111's setting (1 = last layer,
    2 = penultimate, as `layer="penultimate"`), the default of `encode`. `embedding_db` holds the
    textual-inversion embeddings (`pww_ldm.load_embeddings`); `tokenizer` chunks prompts with them.
    """

    def __init__(self, version: str = "openai/clip-vit-large-patch14", device: str = "cpu",
                 max_length: int = 77, freeze: bool = True, layer: str = "last",
                 config: dict | None = None, clip_skip: int = 1) -> None:
        super().__init__()
        text_config = CLIPTextConfig(**{**VIT_L14_TEXT, **(config or {})})
        text_config._attn_implementation = "sdpa"
        self.transformer = _TextModelHolder(CLIPTextModel(text_config))
        self.embedding_db = EmbeddingDatabase()
        self.tokenizer = PromptTokenizer(get_tokenizer(), self.embedding_db)
        self.max_length = max_length
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        self.clip_skip = 2 if layer == "penultimate" else self.check_clip_skip(clip_skip)
        self.native_clip_skip = 2 if layer == "penultimate" else 1  # the config's own layer
        if freeze:
            self.freeze()

    @property
    def num_layers(self) -> int:
        """Transformer layers of the text encoder (12 for SD v1)."""
        return len(self.transformer.text_model.encoder.layers)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token embedding table (vocabulary, hidden)."""
        return self.transformer.text_model.embeddings.token_embedding

    def check_clip_skip(self, clip_skip: int) -> int:
        """`clip_skip` if it is an int in 1..num_layers, else a ValueError saying the range."""
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) \
                or not 1 <= clip_skip <= self.num_layers:
            raise ValueError(f"clip skip must be an integer from 1 (last layer) to {self.num_layers} "
                             f"(this text encoder's layers), got {clip_skip!r}")
        return clip_skip

    def freeze(self) -> None:
        """Eval mode, no gradients (SD's text encoder is frozen)."""
        self.transformer.eval()
        for p in self.parameters():
            p.requires_grad = False

    def tokenize(self, text: str | list[str]) -> torch.Tensor:
        """Prompt(s) -> (B, 77) plain token ids (no syntax, truncated), padded with 49407 as SD v1."""
        return self.tokenizer(text, max_length=self.max_length)

    @contextmanager
    def _embedding_vectors(self, fixes: Sequence[Sequence[tuple[int, Embedding]]]) -> Iterator[None]:
        # The token-embedding output gets the embeddings' vectors at their slots for one call
        # (A1111's EmbeddingsWithFixes), by a hook: no module is replaced, state_dict keys stay.
        if not any(fixes):
            yield
            return

        def put_vectors(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            for row, row_fixes in enumerate(fixes):
                for offset, embedding in row_fixes:
                    start = 1 + offset  # after BOS
                    output[row, start : start + embedding.n_vectors] = embedding.vectors.to(output)
            return output

        handle = self.token_embedding.register_forward_hook(put_vectors)
        try:
            yield
        finally:
            handle.remove()

    def encode_tokens(self, tokens: torch.Tensor, clip_skip: int | None = None,
                      fixes: Sequence[Sequence[tuple[int, Embedding]]] = ()) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, hidden) embeddings.

        clip_skip (default self.clip_skip): 1 = last_hidden_state; N > 1 = hidden_states[-N]
        then the final layer norm (A1111). fixes[b]: (content offset, embedding) whose vectors
        replace row b's token embeddings at positions 1 + offset .. (textual inversion).
        """
        skip = self.clip_skip if clip_skip is None else self.check_clip_skip(clip_skip)
        device = self.token_embedding.weight.device
        with self._embedding_vectors(fixes):
            out = self.transformer(tokens.to(device), output_hidden_states=skip > 1)
        if skip == 1:
            return out.last_hidden_state
        return self.transformer.text_model.final_layer_norm(out.hidden_states[-skip])

    def encode_chunks(self, batch: Sequence[Sequence[PromptChunk]],
                      clip_skip: int | None = None) -> torch.Tensor:
        """Chunked prompts -> (B, 77*k, hidden), k the most chunks of any prompt.

        Chunk i of every prompt is encoded in one batch; a prompt with fewer chunks gets empty
        chunks (BOS + EOS padding, the empty prompt's tokens), as A1111 does.
        """
        count = max(len(chunks) for chunks in batch)
        out = []
        for i in range(count):
            row = [chunks[i] if i < len(chunks) else PromptChunk() for chunks in batch]
            tokens = torch.tensor([c.padded_tokens() for c in row], dtype=torch.long)
            z = self.encode_tokens(tokens, clip_skip, [c.fixes for c in row])
            multipliers = torch.tensor([c.padded_multipliers() for c in row], device=z.device)
            out.append(apply_emphasis(z, multipliers))
        return torch.cat(out, dim=1)

    def encode(self, text: str | list[str], clip_skip: int | None = None) -> torch.Tensor:
        """Prompt(s) in A1111 syntax -> (B, 77*k, hidden), emphasis applied."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("no prompt given: pass a string or a non-empty list of strings")
        return self.encode_chunks([self.tokenizer.chunks(t) for t in texts], clip_skip)

    def forward(self, text: str | list[str]) -> torch.Tensor:
        """Prompt(s) -> (B, 77*k, hidden); CompVis's call, the same as `encode`."""
        return self.encode(text)


def pad_to_same_length(model: Any, cond: torch.Tensor, uncond: torch.Tensor,
                       clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cond (B, 77*k, C) and uncond (B', 77*k', C) with the shorter extended to the longer's chunks.

    A1111's `pad_cond_uncond`: the empty prompt's (1, 77, C) encoding (with the same clip skip)
    is appended once per missing chunk. `model`: a LatentDiffusion or its text encoder. Tensors
    already of equal length are returned as they are.
    """
    if cond.shape[1] == uncond.shape[1]:
        return cond, uncond
    if cond.shape[1] % CHUNK_POSITIONS or uncond.shape[1] % CHUNK_POSITIONS:
        raise ValueError(f"cond and uncond must have 77*k tokens; got {cond.shape[1]} and "
                         f"{uncond.shape[1]}")
    encoder = getattr(model, "cond_stage_model", model)
    with torch.no_grad():
        empty = encoder.encode([""], clip_skip=clip_skip).to(cond)
    repeats = (cond.shape[1] - uncond.shape[1]) // CHUNK_POSITIONS
    if repeats > 0:
        uncond = torch.cat([uncond, empty.repeat(uncond.shape[0], repeats, 1)], dim=1)
    else:
        cond = torch.cat([cond, empty.repeat(cond.shape[0], -repeats, 1)], dim=1)
    return cond, uncond
