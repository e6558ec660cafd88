"""The start of a UNet call computed once for the rows a CFG batch repeats.

Classifier-free guidance runs the UNet on [x; x] with the same timestep: the unconditional and
conditional rows differ only in the text, which enters at the first cross-attention. Everything
before it (conv_in, the first ResBlock, the first transformer's norm, projection and
self-attention at the finest grid) is the same for both halves; computing it once saves ~2.5 %
of a 512 px SD v1 CFG step (the 64x64 self-attention is its largest part). Rows are shared only
when they are equal (checked on the inputs, not assumed) and no plug-in acts on the
self-attention (whose rows it may treat apart), on the CPU without torch.compile (the row check
would break a compiled graph, and sync with the host on CUDA). The result is the same up to
float rounding (one row instead of two in the same kernels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..conditioning import UNetContext
from ..gemm import compiling

if TYPE_CHECKING:
    from .unet import UNetModel


# Input blocks the shared start covers: conv_in, then [ResBlock, SpatialTransformer].
SHARED_BLOCKS = 2


def repeat_period(x: torch.Tensor, timesteps: torch.Tensor) -> int | None:
    """The smallest p < B such that x (B, ...) and timesteps (B,) are p rows repeated B / p times,
    or None when the rows do not repeat."""
    b = x.shape[0]
    for p in range(1, b // 2 + 1):
        if b % p:
            continue
        copies = b // p
        if (torch.equal(x.view(copies, p, *x.shape[1:]), x[:p].expand(copies, *x[:p].shape))
                and torch.equal(timesteps.view(copies, p), timesteps[:p].expand(copies, p))):
            return p
    return None


def shared_start(unet: UNetModel, x: torch.Tensor, timesteps: torch.Tensor, emb: torch.Tensor,
                 context: torch.Tensor | UNetContext | None
                 ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """Input blocks 0 and 1 on the distinct rows only, repeated after the first self-attention:
    (their two skip features, the hidden state), both (B, C, h, w); None where rows are not
    shared (see the module docstring)."""
    from .attention import SpatialTransformer
    from .unet import ResBlock

    blocks = unet.input_blocks
    if len(blocks) < SHARED_BLOCKS or len(blocks[0]) != 1 or len(blocks[1]) != 2:
        return None
    resblock, transformer = blocks[1]
    if not (isinstance(resblock, ResBlock) and isinstance(transformer, SpatialTransformer)):
        return None
    if isinstance(context, UNetContext) and context.active_plugins("self"):
        return None
    # Comparing rows is data-dependent control flow: a graph break under torch.compile and a
    # host sync on CUDA (where it is not measured); so CPU eager only.
    if compiling() or x.device.type != "cpu":
        return None
    p = repeat_period(x, timesteps)
    if p is None:
        return None
    copies = x.shape[0] // p
    first = blocks[0](x[:p], emb[:p], context)
    h = transformer(resblock(first, emb[:p]), context, copies=copies)
    return [first.repeat(copies, 1, 1, 1), h], h


def set_shared_rows(model: torch.nn.Module, enabled: bool) -> int:
    """Turn row sharing on (the default) or off (every row through every block, as CompVis
    computes) in every UNet of `model`; returns how many were set."""
    count = 0
    for module in model.modules():
        if hasattr(module, "share_rows"):
            module.share_rows = bool(enabled)
            count += 1
    return count
