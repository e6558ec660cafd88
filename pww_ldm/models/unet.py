"""The SD v1 UNet in the CompVis layout (ldm/modules/diffusionmodules/openaimodel.py).

Three building blocks (ResBlock, SpatialTransformer, Up/Downsample) wrapped in
TimestepEmbedSequential give every `model.diffusion_model.*` key of a real checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..conditioning import UNetContext
from .attention import SpatialTransformer, zero_module
from .linear import Linear
from .shared_rows import SHARED_BLOCKS, shared_start
from .upsample import FoldedKernels, folds, upsample_conv
from .winograd import Conv3x3


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, as CompVis does, so fp16 runs keep their statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, ...) -> same shape and dtype."""
        compute = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays
        weight = None if self.weight is None else self.weight.to(compute)
        bias = None if self.bias is None else self.bias.to(compute)
        out = F.group_norm(x.to(compute), self.num_groups, weight, bias, self.eps)
        return out.type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: 32-group float32 GroupNorm."""
    return GroupNorm32(32, channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Downsample(nn.Module):
    """Stride-2 3x3 conv (`op`), or average pooling when use_conv is False."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2,
                 out_channels: int | None = None, padding: int = 1) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=padding)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) -> (B, C', ceil(h/2), ceil(w/2))."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling (to `size` when the skip connection's grid is odd), then a conv."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2,
                 out_channels: int | None = None, padding: int = 1) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        self.fold = True  # pww_ldm.models.upsample.set_folded_upsample
        self.folded_kernels = FoldedKernels()
        if use_conv:
            self.conv = Conv3x3(channels, out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """x (B, C, h, w) -> (B, C', *size) or (B, C', 2h, 2w)."""
        doubles = size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])
        if self.use_conv and self.fold and doubles and folds(self.conv):
            return upsample_conv(x, self.conv, self.folded_kernels)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block with a timestep embedding added between its two convs."""

    def __init__(self, channels: int, emb_channels: int, dropout: float,
                 out_channels: int | None = None, use_conv: bool = False,
                 use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False) -> None:
        super().__init__()
        if up or down:
            raise NotImplementedError("resblock_updown is not used by Stable Diffusion v1")
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       Conv3x3(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(Conv3x3(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w), emb (B, emb_channels) -> (B, C_out, h, w)."""
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands each layer what it needs: emb to ResBlocks, context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,
                context: torch.Tensor | UNetContext | None = None,
                upsample_size: Sequence[int] | None = None) -> torch.Tensor:
        """x (B, C, h, w) -> (B, C', h', w'); upsample_size fixes the grid of an Upsample."""
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """The diffusion UNet with cross-attention (CompVis `UNetModel`, SD v1 subset).

    Constructor parameters are CompVis's (see configs/v1-inference.yaml); the ones SD never sets
    are accepted for config compatibility and must keep their defaults.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int,
                 out_channels: int, num_res_blocks: int, attention_resolutions: Sequence[int],
                 dropout: float = 0.0, channel_mult: Sequence[int] = (1, 2, 4, 8),
                 conv_resample: bool = True, dims: int = 2, num_classes: int | None = None,
                 use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = -1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, use_spatial_transformer: bool = False,
                 transformer_depth: int = 1, context_dim: int | None = None,
                 n_embed: int | None = None, legacy: bool = True,
                 use_linear_in_transformer: bool = False) -> None:
        super().__init__()
        if num_classes is not None or n_embed is not None or not use_spatial_transformer:
            raise NotImplementedError(
                "only the cross-attention UNet of Stable Diffusion is supported "
                "(use_spatial_transformer: true, no num_classes / n_embed)")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels")
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.share_rows = True  # pww_ldm.models.shared_rows.set_shared_rows
        self.out_channels = out_channels
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        Linear(time_embed_dim, time_embed_dim))

        def transformer(ch: int) -> SpatialTransformer:
            if num_head_channels == -1:
                heads, dim_head = num_heads, ch // num_heads
            else:
                heads, dim_head = ch // num_head_channels, num_head_channels
            return SpatialTransformer(ch, heads, dim_head, depth=transformer_depth,
                                      context_dim=context_dim,
                                      use_linear=use_linear_in_transformer)

        def resblock(ch: int, out: int) -> ResBlock:
            return ResBlock(ch, time_embed_dim, dropout, out_channels=out,
                            use_scale_shift_norm=use_scale_shift_norm)

        self.input_blocks, skip_channels, ds = _down_path(
            in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
            conv_resample, resblock, transformer)
        ch = skip_channels[-1]
        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), transformer(ch),
                                                    resblock(ch, ch))

        self.output_blocks, ch = _up_path(ch, ds, skip_channels, model_channels, channel_mult,
                                          num_res_blocks, attention_resolutions, conv_resample,
                                          resblock, transformer)

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))

    def attention_grids(self, h: int, w: int) -> list[tuple[int, int]]:
        """The distinct (h, w) grids of the UNet's levels for an h x w latent, finest first.

        Each Downsample halves the grid rounding up (stride-2 conv with padding 1, or pooling of
        an even grid), so the grids are exactly those the SpatialTransformers will see.
        """
        grids = [(h, w)]
        for _ in range(sum(isinstance(m, Downsample) for m in self.modules())):
            h, w = (h + 1) // 2, (w + 1) // 2
            grids.append((h, w))
        return grids

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor | UNetContext | None = None) -> torch.Tensor:
        """Predict the noise.

        x: (B, in_channels, h, w) latent, any h, w (odd grids are handled on the way up);
        timesteps: (B,) possibly fractional; context: (B, 77, context_dim) or a UNetContext.
        Returns (B, out_channels, h, w).
        """
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        run = context.approx if isinstance(context, UNetContext) else None
        if run is not None:
            return self._approximated(x, timesteps, emb, context, run)
        skips, h = self._start(x, timesteps, emb, context)
        for module in self.input_blocks[len(skips):]:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        return self._up(h, skips, self.output_blocks, emb, context)

    def _start(self, x: torch.Tensor, timesteps: torch.Tensor, emb: torch.Tensor,
               context: torch.Tensor | UNetContext | None, depth: int | None = None
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(skips, h) after the first input blocks computed once for the rows a CFG batch repeats
        (pww_ldm.models.shared_rows), or ([], x) when none are shared or `depth` < 2."""
        if not self.share_rows or (depth is not None and depth < SHARED_BLOCKS):
            return [], x
        shared = shared_start(self, x, timesteps, emb, context)
        return ([], x) if shared is None else shared

    def _up(self, h: torch.Tensor, skips: list[torch.Tensor], blocks: Sequence[nn.Module],
            emb: torch.Tensor, context: torch.Tensor | UNetContext | None,
            keep: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """The output `blocks` (the last len(skips) of output_blocks) on h, consuming `skips`;
        keep(i, h) sees the feature entering each block i. Returns the UNet's output."""
        for i, module in enumerate(blocks):
            if keep is not None:
                keep(i, h)
            h = torch.cat([h, skips.pop()], dim=1)
            # On the way up, upsample to the grid of the next skip connection, not blindly 2x:
            # a 75-row latent went down as 75 -> 38 -> 19 -> 10 and must come back the same way.
            h = module(h, emb, context, upsample_size=skips[-1].shape[-2:] if skips else None)
        return self.out(h)

    def _approximated(self, x: torch.Tensor, timesteps: torch.Tensor, emb: torch.Tensor,
                      context: UNetContext, run: Any) -> torch.Tensor:
        """The forward under a run's approximations (pww_ldm.approx.ApproxRun): token merging
        happens in the transformer blocks; DeepCache decides here which blocks run.

        A full call keeps the feature entering output block n - 1 - branch (n output blocks);
        a cached call runs input blocks 0..branch, then output blocks n - 1 - branch.. on it."""
        branch = run.settings.deepcache_branch
        if run.caching and branch >= len(self.input_blocks):
            raise ValueError(f"deepcache_branch {branch} is too deep for this UNet: it has "
                             f"{len(self.input_blocks)} input blocks; use 0..{len(self.input_blocks) - 1}")
        deep = run.start_call(self.attention_grids(*x.shape[-2:]), (x.shape, x.dtype, x.device))
        depth = len(self.input_blocks) if deep is None else branch + 1
        skips, h = self._start(x, timesteps, emb, context, depth)
        for module in self.input_blocks[len(skips):depth]:
            h = module(h, emb, context)
            skips.append(h)
        if deep is not None:
            return self._up(deep, skips, self.output_blocks[-depth:], emb, context)
        h = self.middle_block(h, emb, context)
        cached_at = len(self.output_blocks) - 1 - branch

        def keep(i: int, feature: torch.Tensor) -> None:
            if run.caching and i == cached_at:
                run.keep(feature)

        return self._up(h, skips, self.output_blocks, emb, context, keep)


Block = Callable[..., nn.Module]


def _down_path(in_channels: int, model_channels: int, channel_mult: Sequence[int],
               num_res_blocks: int, attention_resolutions: Sequence[int], conv_resample: bool,
               resblock: Block, transformer: Block) -> tuple[nn.ModuleList, list[int], int]:
    """CompVis's input_blocks: (blocks, the channels of each skip connection, final downsampling)."""
    blocks = nn.ModuleList([
        TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
    skip_channels = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers: list[nn.Module] = [resblock(ch, mult * model_channels)]
            ch = mult * model_channels
            if ds in attention_resolutions:
                layers.append(transformer(ch))
            blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, out_channels=ch)))
            skip_channels.append(ch)
            ds *= 2
    return blocks, skip_channels, ds


def _up_path(ch: int, ds: int, skip_channels: list[int], model_channels: int,
             channel_mult: Sequence[int], num_res_blocks: int, attention_resolutions: Sequence[int],
             conv_resample: bool, resblock: Block, transformer: Block) -> tuple[nn.ModuleList, int]:
    """CompVis's output_blocks, consuming skip_channels: (blocks, channels out)."""
    blocks = nn.ModuleList([])
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_resolutions:
                layers.append(transformer(ch))
            if level and i == num_res_blocks:
                layers.append(Upsample(ch, conv_resample, out_channels=ch))
                ds //= 2
            blocks.append(TimestepEmbedSequential(*layers))
    return blocks, ch
