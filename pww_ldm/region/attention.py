"""RegionCrossAttention: Paint-with-Words inside a SpatialTransformer's cross-attention.

eDiffi (Balaji et al. 2022, "eDiff-I", section 4.3) biases the cross-attention scores of the
(pixel, token) pairs a region paints: softmax((QK^T + f(w, sigma, QK^T)) * scale) V. The bias
function and the per-grid weight maps come from the RegionContext carried by the UNetContext;
only the rows named by `region_rows` (the conditional half of a CFG batch) get a bias.
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
        rows = context.region_rows
        if rows is None:
            return self.merge(torch.matmul(self.region_probs(q, k, context), v))
        # Rows without regions (the unconditional half of CFG) stay on the fast kernel and give
        # exactly what plain SD gives; only the region rows take the biased path.
        plain = attention(q, k, v, self.attention_kernel)
        biased = torch.matmul(self.region_probs(q[rows], k[rows], context, all_rows=True), v[rows])
        return self.merge(plain.index_copy(0, rows, biased))

    def region_probs(self, q: torch.Tensor, k: torch.Tensor, context: UNetContext,
                     all_rows: bool = False) -> torch.Tensor:
        """Attention probabilities with the region bias: q (B, H, N, d), k (B, H, T, d) ->
        (B, H, N, T) in q's dtype; N = h * w of `context.grid`. The bias goes to the rows named
        by `context.region_rows`, or to every row of q when `all_rows` (q already selected)."""
        if context.grid is None:
            raise ValueError("RegionCrossAttention needs the layer's grid: call context.at_grid(h, w)")
        # Unscaled scores in float32: the weight functions use their max/std, and fp16 scores
        # of real SD layers overflow once multiplied by a bias of the same magnitude.
        compute = torch.promote_types(q.dtype, torch.float32)
        scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2))  # (B, H, N, T)
        rows = context.region_rows
        if rows is None:
            rows = torch.arange(scores.shape[0], device=scores.device)
        sigma = context.sigma.to(scores.device, compute)[rows]
        if all_rows:
            scores = scores + context.regions.bias(scores, sigma, context.grid)
        else:
            bias = context.regions.bias(scores[rows], sigma, context.grid)
            scores = scores.index_add(0, rows, bias.expand_as(scores[rows]))
        return (scores * self.scale).softmax(dim=-1).to(q.dtype)
