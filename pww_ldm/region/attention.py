"""RegionCrossAttention: Paint-with-Words inside a SpatialTransformer's cross-attention.

eDiffi (Balaji et al. 2022, "eDiff-I", section 4.3) biases the cross-attention scores of the
(pixel, token) pairs a region paints: softmax((QK^T + f(w, sigma, QK^T)) * scale) V. The bias
function and the per-grid weight maps come from the RegionContext carried by the UNetContext;
only the rows in `region_rows` (the conditional half of a CFG batch) get a bias.
"""

from __future__ import annotations

import torch

from ..conditioning import UNetContext
from ..kernels import attention
from ..models.cross_attention import CrossAttention


class RegionCrossAttention(CrossAttention):
    """CrossAttention that adds the Paint-with-Words bias when the context carries regions.

    Without regions it is exactly CrossAttention (same kernel, same numbers), which is what
    makes "no region = plain Stable Diffusion, bit for bit" hold.
    """

    def forward(self, x: torch.Tensor, context: torch.Tensor | UNetContext | None = None
                ) -> torch.Tensor:
        """x (B, h*w, query_dim), context (B, 77, context_dim) or UNetContext -> (B, h*w, query_dim)."""
        if not isinstance(context, UNetContext) or context.regions is None:
            return super().forward(x, context)
        q, k, v = self.project(x, context)
        n = q.shape[0]
        start, stop, _ = (context.region_rows or slice(0, n)).indices(n)
        # Rows without regions (the unconditional half of CFG) stay on the fast kernel and give
        # exactly what plain SD gives; only the region rows take the biased path. Slices are
        # views: no gather, and each kernel runs only on its own rows.
        probs = self.region_probs(q[start:stop], k[start:stop], context.sigma[start:stop], context)
        pieces = [torch.matmul(probs, v[start:stop])]
        if start > 0:
            pieces.insert(0, attention(q[:start], k[:start], v[:start], self.attention_kernel))
        if stop < n:
            pieces.append(attention(q[stop:], k[stop:], v[stop:], self.attention_kernel))
        return self.merge(pieces[0] if len(pieces) == 1 else torch.cat(pieces))

    def region_probs(self, q: torch.Tensor, k: torch.Tensor, sigma: torch.Tensor,
                     context: UNetContext) -> torch.Tensor:
        """Attention probabilities with the region bias for rows that all take it.

        q (n, H, N, d), k (n, H, T, d), sigma (n,) -> (n, H, N, T) in q's dtype; N = h * w of
        `context.grid`.
        """
        if context.grid is None:
            raise ValueError("RegionCrossAttention needs the layer's grid: call context.at_grid(h, w)")
        # Unscaled scores in float32: the weight functions use their max/std, and fp16 scores
        # of real SD layers overflow once multiplied by a bias of the same magnitude.
        compute = torch.promote_types(q.dtype, torch.float32)
        scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2))  # (n, H, N, T)
        scores = scores + context.regions.bias(scores, sigma.to(scores.device, compute), context.grid)
        return (scores * self.scale).softmax(dim=-1).to(q.dtype)
