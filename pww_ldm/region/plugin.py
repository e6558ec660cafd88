"""Paint-with-Words as an attention plug-in: the region bias on the cross-attention scores.

eDiffi (Balaji et al. 2022, "eDiff-I", section 4.3) biases the cross-attention scores of the
(pixel, token) pairs a region paints: softmax((QK^T + f(w, sigma, QK^T)) * scale) V. The bias
function and the per-grid weight maps come from the RegionContext; the plug-in sees the
conditional rows only (the unconditional half of CFG stays plain SD). It implements
`pww_ldm.conditioning.AttentionPlugin` by shape, so this package imports nothing of the network.
"""

from __future__ import annotations

from typing import Any

import torch

from .context import RegionContext
from .errors import RegionError


class PaintWithWords:
    """The Paint-with-Words plug-in of one generation: adds `regions.bias` to cross-attention.

    acts_on "cond": the conditional rows of a CFG batch (all rows of an unguided call).
    """

    acts_on = "cond"

    def __init__(self, regions: RegionContext) -> None:
        self.regions = regions

    def hooks(self, kind: str) -> tuple[bool, bool]:
        """(modifies scores, observes probs): scores of cross-attention only."""
        return (kind == "cross", False)

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        """scores (n, heads, h*w, T) unscaled -> scores + the region bias of `call.grid`."""
        if call.grid is None:
            raise RegionError("Paint-with-Words needs the attention layer's grid: the UNet's "
                              "SpatialTransformer sets it with UNetContext.at_grid(h, w)")
        return scores + self.regions.bias(scores, call.sigma, call.grid)

    def observe(self, probs: torch.Tensor, call: Any) -> None:
        """Paint-with-Words observes nothing."""

    def __repr__(self) -> str:
        return f"PaintWithWords({self.regions!r})"
