"""What the UNet's `context` argument carries.

A plain SD call passes the text embeddings tensor (B, 77, C) as `context`. Paint-with-Words needs
more at every cross-attention: the current noise level and the region weights. Rather than
globals or monkeypatching, the sampler wraps them in a `UNetContext` and passes it as `context`;
every module between the UNet's entry and `RegionCrossAttention` forwards it untouched, and
`SpatialTransformer` narrows it to its own grid with `at_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .region.context import RegionContext


@dataclass(frozen=True)
class UNetContext:
    """Conditioning of one UNet call.

    embeddings: (B, T, C) text embeddings, rows in the order of the UNet batch.
    sigma: (B,) k-diffusion noise level of each row at this call (sigma of the sampler step).
    regions: Paint-with-Words weights, or None for plain Stable Diffusion.
    region_rows: the contiguous batch rows the regions apply to, in the order of the region
        context's images (the conditional half of a CFG batch, `slice(n, 2n)`); other rows get
        no bias. None: every row. A slice rather than an index tensor: the attention layers
        cut the batch with views, without a gather or a device sync.
    grid: (h, w) of the attention layer this context was narrowed to by `at_grid`, else None.
    """

    embeddings: torch.Tensor
    sigma: torch.Tensor
    regions: RegionContext | None = None
    region_rows: slice | None = None
    grid: tuple[int, int] | None = None

    def at_grid(self, h: int, w: int) -> UNetContext:
        """The same context for an attention layer whose hidden state is an h x w grid."""
        return replace(self, grid=(h, w))


def text_embeddings(context: torch.Tensor | UNetContext) -> torch.Tensor:
    """The (B, T, C) embeddings of a context given either as a tensor or a UNetContext."""
    return context.embeddings if isinstance(context, UNetContext) else context
