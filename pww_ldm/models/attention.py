"""The UNet's transformer blocks, as in CompVis ldm/modules/attention.py.

SpatialTransformer -> BasicTransformerBlock -> attn1 (self), attn2 (cross), ff; both attentions ask
the plug-ins of a UNetContext (see pww_ldm.conditioning).
Attribute names match CompVis so `model.diffusion_model.*.transformer_blocks.*` keys load as-is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..conditioning import UNetContext
from .cross_attention import CrossAttention
from .linear import Linear
from .token_merge import Merge, bipartite_soft_matching_2d, draw_destinations


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (CompVis initialises output projections this way)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): proj to 2*dim_out, x * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim_in) -> (..., dim_out)."""
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU or Linear+GELU, net.1 = Dropout, net.2 = Linear (CompVis key layout)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(Linear(dim, inner_dim),
                                                                     nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout),
                                 Linear(inner_dim, dim if dim_out is None else dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (..., dim_out)."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and a gated feed-forward, pre-norm."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0,
                 context_dim: int | None = None, gated_ff: bool = True,
                 checkpoint: bool = True) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads,
                                    dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | UNetContext | None = None,
                copies: int = 1) -> torch.Tensor:
        """x (B, h*w, dim), context (copies * B, 77, context_dim) or UNetContext
        -> (copies * B, h*w, dim): the self-attention's result is repeated `copies` times before
        the cross-attention (pww_ldm.models.shared_rows)."""
        hooks = context if isinstance(context, UNetContext) else None
        matching = _token_merging(x, hooks)
        if matching is None:
            x = self.attn1(self.norm1(x), unet_context=hooks) + x
        else:  # ToMe: self-attention over the merged tokens only; cross-attention sees them all
            merge, unmerge = matching
            x = unmerge(self.attn1(merge(self.norm1(x)), unet_context=hooks)) + x
        if copies > 1:
            x = x.repeat(copies, 1, 1)
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


def _token_merging(x: torch.Tensor, hooks: UNetContext | None) -> tuple[Merge, Merge] | None:
    """ToMe's (merge, unmerge) for the self-attention of x (B, h*w, dim), or None for exact.

    Merges where the run's approximations say so (pww_ldm.approx) and no plug-in acts on the
    self-attention (its scores are per pixel: DenseDiffusion's modulation, self-attention maps)."""
    run = hooks.approx if hooks is not None else None
    if run is None or not run.merges(hooks.grid) or hooks.active_plugins("self"):
        return None
    h, w = hooks.grid
    settings = run.settings
    if h < settings.tome_stride[0] or w < settings.tome_stride[1]:
        return None  # no full cell: no destination to merge into
    choice = draw_destinations(h, w, settings.tome_stride, run.generator)
    # tomesd: r = int(N * ratio), computed on the hidden state before the norm
    return bipartite_soft_matching_2d(x, h, w, int(x.shape[1] * settings.tome), settings.tome_stride,
                                      choice)


class SpatialTransformer(nn.Module):
    """Transformer over an image grid: norm, 1x1 proj_in, blocks on (h w) tokens, proj_out.

    `use_linear` (SD 2.x layout) projects with Linear after flattening instead of 1x1 convs.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1,
                 dropout: float = 0.0, context_dim: int | None = None,
                 use_linear: bool = False, use_checkpoint: bool = True) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6, affine=True)
        if use_linear:
            self.proj_in = Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout,
                                  context_dim=context_dim)
            for _ in range(depth)
        )
        proj_out = (Linear(inner_dim, in_channels) if use_linear
                    else nn.Conv2d(inner_dim, in_channels, kernel_size=1))
        self.proj_out = zero_module(proj_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor | UNetContext | None = None,
                copies: int = 1) -> torch.Tensor:
        """x (B, C, h, w), context (copies * B, 77, context_dim) or UNetContext
        -> (copies * B, C, h, w); copies > 1 repeats the rows after the first self-attention."""
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        # Plug-ins (e.g. region weights resampled per grid) need this layer's own grid.
        if isinstance(context, UNetContext):
            context = context.at_grid(h, w)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=context, copies=copies if i == 0 else 1)
        if self.use_linear:
            x = self.proj_out(x)
        # (b, h*w, c) seen as (b, c, h, w) has channels_last strides. Give it x_in's layout:
        # a channels_last tensor leaking into an NCHW UNet makes every later 3x3 conv reorder
        # its weight on every call (measured ~5 % of a CPU step).
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous(memory_format=_layout(x_in))
        if not self.use_linear:
            x = self.proj_out(x)
        return x + (x_in.repeat(copies, 1, 1, 1) if copies > 1 else x_in)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of a (B, C, H, W) tensor: channels_last only when it is laid out so."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
