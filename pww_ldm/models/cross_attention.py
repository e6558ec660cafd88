"""CompVis `CrossAttention` (ldm/modules/attention.py): multi-head attention over a context.

Attribute names (to_q, to_k, to_v, to_out.0) match CompVis so SD checkpoints load as-is.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..conditioning import UNetContext, text_embeddings
from ..kernels import attention


class CrossAttention(nn.Module):
    """Multi-head attention of x over `context` (self-attention when context is None).

    query_dim: channels of x; context_dim: channels of the context (defaults to query_dim).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.attention_kernel = "sdpa"

    def project(self, x: torch.Tensor, context: torch.Tensor | UNetContext | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v split into heads: x (B, N, query_dim) -> q (B, H, N, d), k/v (B, H, M, d)."""
        source = x if context is None else text_embeddings(context).to(x.dtype)
        q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        return tuple(rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """Heads back together and the output projection: (B, H, N, d) -> (B, N, query_dim)."""
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: torch.Tensor, context: torch.Tensor | UNetContext | None = None
                ) -> torch.Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) or UNetContext -> (B, N, query_dim)."""
        q, k, v = self.project(x, context)
        return self.merge(attention(q, k, v, self.attention_kernel))
