"""The contract between the sampler and the UNet's attention layers: `UNetContext` and plug-ins.

A plain SD call passes the text embeddings tensor (B, T, C) as `context`. Features that act inside
attention (Paint-with-Words' score bias, self-attention modulation, attention maps) need more at
every attention layer: the noise level, the layer's grid, which batch rows are conditional. Rather
than globals or monkeypatching, the sampler wraps them in a `UNetContext` and passes it as
`context`; every module between the UNet's entry and the attention layers forwards it untouched,
`SpatialTransformer` narrows it to its own grid with `at_grid`, and each attention layer asks the
context's plug-ins (`AttentionPlugin`) what to do. This module imports nothing of the network or
of any feature: `models/` depends on it, and features implement it without importing `models/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch

ATTENTION_KINDS = ("cross", "self")
ROW_GROUPS = ("cond", "uncond", "all")


@dataclass(frozen=True)
class AttentionCall:
    """What an attention layer tells a plug-in about the call its tensors come from.

    kind: "cross" (over the text tokens) or "self" (over the layer's own pixels).
    grid: (h, w) of the layer's hidden state (N = h * w query pixels), None outside a UNet.
    sigma: (n,) k-diffusion noise level of the n rows handed to the plug-in.
    rows: the rows of the UNet batch those n rows are (a slice of the batch).
    scale: the softmax temperature the layer applies after the plug-ins (1 / sqrt(d_head)).
    """

    kind: str
    grid: tuple[int, int] | None
    sigma: torch.Tensor
    rows: slice
    scale: float


@runtime_checkable
class AttentionPlugin(Protocol):
    """Anything that acts on the attention layers of a UNet call.

    acts_on: which rows of a classifier-free-guidance batch it sees: "cond", "uncond" or "all".
    hooks(kind) -> (modifies_scores, observes_probs) for kind "cross" or "self"; a layer whose
    plug-ins all answer (False, False) runs its fused kernel, bit for bit plain SD.
    modify_scores(scores, call) -> scores: scores (n, heads, N, T) float32 (or float64), the
    unscaled QK^T of this plug-in's rows; returns the new scores, same shape. Plug-ins are asked
    in the order of `UNetContext.plugins`.
    observe(probs, call): probs (n, heads, N, T) in the model's dtype, after the softmax; must not
    modify them.
    Optional augment_qk(q, k, call) -> (q', k'): q (n, heads, N, d), k (n, heads, T, d) ->
    (n, heads, N, d'), (n, heads, T, d') with q' k'^T equal to the modified scores up to a
    constant per row. When it is the only plug-in acting on a layer's rows and it does not
    observe, the layer runs its fused kernel on q', k' instead of holding the N x T scores
    (DenseDiffusion's self-attention modulation uses it).
    """

    acts_on: str

    def hooks(self, kind: str) -> tuple[bool, bool]: ...

    def modify_scores(self, scores: torch.Tensor, call: AttentionCall) -> torch.Tensor: ...

    def observe(self, probs: torch.Tensor, call: AttentionCall) -> None: ...


@dataclass(frozen=True)
class UNetContext:
    """Conditioning of one UNet call.

    embeddings: (B, T, C) text embeddings, rows in the order of the UNet batch (T = 77 * chunks).
    sigma: (B,) k-diffusion noise level of each row at this call (sigma of the sampler step).
    plugins: the attention plug-ins of this call; empty = plain Stable Diffusion.
    cond_rows: the contiguous rows of the conditional half of a CFG batch (`slice(n, 2n)` after
        the unconditional rows `slice(0, n)`); None: every row is conditional. A slice rather
        than an index tensor: the attention layers cut the batch with views, without a gather.
    grid: (h, w) of the attention layer this context was narrowed to by `at_grid`, else None.
    approx: the state of the sampling run's optional approximations (a `pww_ldm.approx.ApproxRun`:
        token merging, feature caching), None for the exact UNet. Typed Any: this module
        imports nothing of the package.
    """

    embeddings: torch.Tensor
    sigma: torch.Tensor
    plugins: tuple[AttentionPlugin, ...] = ()
    cond_rows: slice | None = None
    grid: tuple[int, int] | None = None
    approx: Any = None

    def at_grid(self, h: int, w: int) -> UNetContext:
        """The same context for an attention layer whose hidden state is an h x w grid."""
        return replace(self, grid=(h, w))

    def rows_of(self, group: str, n: int) -> slice:
        """Batch rows (of n) that a plug-in acting on `group` ("cond", "uncond", "all") sees."""
        if group not in ROW_GROUPS:
            raise ValueError(f"unknown row group {group!r}; plug-ins act on one of {ROW_GROUPS}")
        start, stop, _ = (self.cond_rows or slice(0, n)).indices(n)
        if group == "cond":
            return slice(start, stop)
        return slice(0, start) if group == "uncond" else slice(0, n)

    def active_plugins(self, kind: str) -> list[AttentionPlugin]:
        """The plug-ins that modify or observe attention of this kind ("cross" or "self")."""
        return [p for p in self.plugins if any(p.hooks(kind))]


def text_embeddings(context: torch.Tensor | UNetContext) -> torch.Tensor:
    """The (B, T, C) embeddings of a context given either as a tensor or a UNetContext."""
    return context.embeddings if isinstance(context, UNetContext) else context


def plugin_span(context: UNetContext, plugins: Sequence[AttentionPlugin], n: int) -> slice:
    """The smallest row slice covering every plug-in's rows of an n-row batch (empty if none)."""
    spans = [context.rows_of(p.acts_on, n) for p in plugins]
    spans = [s for s in spans if s.stop > s.start]
    if not spans:
        return slice(0, 0)
    return slice(min(s.start for s in spans), max(s.stop for s in spans))
