"""CompVis `CrossAttention` (ldm/modules/attention.py) with the attention plug-in seam.

Attribute names (to_q, to_k, to_v, to_out.0) match CompVis so SD checkpoints load as-is. The layer
knows only the plug-in protocol of `pww_ldm.conditioning`: when the UNetContext carries plug-ins
that act on this kind of attention, their rows take the explicit path (scores, plug-ins, softmax,
observers, V); every other row, and every call without such plug-ins, runs the fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..conditioning import AttentionCall, AttentionPlugin, UNetContext, plugin_span, text_embeddings
from ..kernels import attention
from .linear import Linear


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
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(Linear(inner_dim, query_dim), nn.Dropout(dropout))
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

    def forward(self, x: torch.Tensor, context: torch.Tensor | UNetContext | None = None,
                unet_context: UNetContext | None = None) -> torch.Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) or UNetContext -> (B, N, query_dim).

        Cross-attention gets its text through `context`; self-attention (context None) gets the
        UNetContext, for its plug-ins only, through `unet_context`.
        """
        kind = "self" if context is None else "cross"
        hooks = context if isinstance(context, UNetContext) else unet_context
        plugins = hooks.active_plugins(kind) if hooks is not None else []
        q, k, v = self.project(x, context)
        if not plugins:
            return self.merge(attention(q, k, v, self.attention_kernel))
        n = q.shape[0]
        span = plugin_span(hooks, plugins, n)
        # Rows no plug-in sees (e.g. the unconditional half of CFG under Paint-with-Words) stay
        # on the fused kernel and give exactly what plain SD gives. Slices are views: no gather.
        fused = self._augmented(q[span], k[span], v[span], hooks, plugins, span, kind)
        pieces = [fused if fused is not None
                  else self._explicit(q[span], k[span], v[span], hooks, plugins, span, kind)]
        if span.start > 0:
            pieces.insert(0, attention(q[:span.start], k[:span.start], v[:span.start],
                                       self.attention_kernel))
        if span.stop < n:
            pieces.append(attention(q[span.stop:], k[span.stop:], v[span.stop:],
                                    self.attention_kernel))
        return self.merge(pieces[0] if len(pieces) == 1 else torch.cat(pieces))

    def _augmented(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hooks: UNetContext,
                   plugins: list[AttentionPlugin], span: slice, kind: str) -> torch.Tensor | None:
        """The fused kernel on a plug-in's augmented q, k for the rows of `span`, or None.

        Taken when exactly one plug-in acts on these rows, it modifies without observing, and it
        offers `augment_qk` (its new scores are q' k'^T up to a per-row constant): the N x N
        scores are then never held (DenseDiffusion's self-attention modulation at 64x64, CPU:
        about 2x a plain attention instead of 8x). q (m, H, N, d) -> (m, H, N, d).
        """
        n = hooks.sigma.shape[0]
        acting = [p for p in plugins if len(range(n)[hooks.rows_of(p.acts_on, n)])]
        if len(acting) != 1 or not hasattr(acting[0], "augment_qk"):
            return None
        plugin = acting[0]
        if plugin.hooks(kind) != (True, False):
            return None
        compute = torch.promote_types(q.dtype, torch.float32)
        call = AttentionCall(kind, hooks.grid, hooks.sigma[span].to(q.device, compute), span, self.scale)
        q_aug, k_aug = plugin.augment_qk(q, k, call)
        # Pad the head dim to a multiple of 8 (the kernels' fast widths; zeros change no dot
        # product) and fold the layer's scale into q, since the kernel divides by sqrt(width).
        width = -(-q_aug.shape[-1] // 8) * 8
        q_aug = F.pad(q_aug, (0, width - q_aug.shape[-1])) * (self.scale * width ** 0.5)
        k_aug = F.pad(k_aug, (0, width - k_aug.shape[-1]))
        out = attention(q_aug, k_aug, F.pad(v, (0, width - v.shape[-1])), self.attention_kernel)
        return out[..., :v.shape[-1]]

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hooks: UNetContext,
                  plugins: list[AttentionPlugin], span: slice, kind: str) -> torch.Tensor:
        """softmax(plug-ins(QK^T) * scale) V for the rows of `span`: q (m, H, N, d) -> (m, H, N, d)."""
        # Unscaled scores in float32: weight functions use their max/std, and fp16 scores of
        # real SD layers overflow once a bias of the same magnitude is added.
        compute = torch.promote_types(q.dtype, torch.float32)
        scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2))  # (m, H, N, T)
        n = hooks.sigma.shape[0]
        observers = []
        for plugin in plugins:
            rows = hooks.rows_of(plugin.acts_on, n)
            if rows.stop <= rows.start:
                continue
            local = slice(rows.start - span.start, rows.stop - span.start)
            call = AttentionCall(kind, hooks.grid, hooks.sigma[rows].to(scores.device, compute),
                                 rows, self.scale)
            modifies, observes = plugin.hooks(kind)
            if modifies:
                if local == slice(0, scores.shape[0]):
                    scores = plugin.modify_scores(scores, call)
                else:
                    scores[local] = plugin.modify_scores(scores[local], call)
            if observes:
                observers.append((plugin, local, call))
        probs = (scores * self.scale).softmax(dim=-1).to(q.dtype)
        for plugin, local, call in observers:
            plugin.observe(probs[local], call)
        return torch.matmul(probs, v)
