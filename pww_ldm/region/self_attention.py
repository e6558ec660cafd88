"""DenseDiffusion attention modulation (Kim et al., ICCV 2023, "Dense Text-to-Image Generation
with Attention Modulation", section 3 and the authors' code).

For the conditional rows, during the first `window` (30 %) of the steps, scores S (per query
row i, over keys j) move towards their row maximum where the pair belongs together and towards
the row minimum where it does not:

    S'_ij = S_ij + w * treg * size_i * (max_j S_ij - S_ij)   if M_ij
    S'_ij = S_ij - w * treg * size_i * (S_ij - min_j S_ij)   otherwise

treg = (t / 1000)^5 (t the DDPM timestep of the call), size_i = 1 - sizereg * |seg(i)| / (h*w)
(|seg(i)| the cell count of query i's segment on the layer's grid). Self-attention
(`DenseSelfAttention`, paper default w = 0.3): M_ij = cells i and j lie in one segment; the
segments are the painted regions plus the unpainted rest (DenseDiffusion's layouts cover the
whole image; its background is a segment too). Cross-attention (`DenseCrossAttention`, default
w = 1.0): M_ij = cell i lies in a region whose label owns token j. Masks go to each grid by
nearest-neighbour sampling, as in the authors' code. The update is linear in S, so it is applied
to the unscaled scores this seam hands over with the same result as on the scaled ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..gemm import onednn_applies, onednn_matmul_t, resolve_backend
from .errors import RegionError
from .timing import StepClock, sigma_to_t

DEFAULT_SELF_WEIGHT = 0.3
DEFAULT_CROSS_WEIGHT = 1.0
DEFAULT_WINDOW = 0.3
DEFAULT_SIZEREG = 1.0


def segment_ids(masks: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """(h*w,) long: the segment of each grid cell, 0..S-1 the regions, S the unpainted rest.

    masks: S (H, W) masks in [0, 1]; each goes to the grid by nearest sampling and counts where
    >= 0.5; a cell two masks claim goes to the first.
    """
    h, w = grid
    if not masks:
        return torch.zeros(h * w, dtype=torch.long)
    stack = torch.stack([m.float() for m in masks])[:, None]
    near = F.interpolate(stack, size=(h, w), mode="nearest")[:, 0].reshape(len(masks), -1) >= 0.5
    rest = ~near.any(0, keepdim=True)
    return torch.cat([near, rest]).float().argmax(0)


def modulate(scores: torch.Tensor, together: torch.Tensor, strength: torch.Tensor
             ) -> torch.Tensor:
    """The DenseDiffusion update. scores (n, heads, N, K); together (N, K) bool; strength
    (n, 1, N, 1) = w * treg * size_i. Returns the modulated scores, same shape."""
    high = scores.amax(dim=-1, keepdim=True)
    low = scores.amin(dim=-1, keepdim=True)
    # Both cases are one interpolation, S + s * (target - S) with target the row max (together)
    # or min (apart): lerp does it in one pass over the (N, K) scores.
    return torch.lerp(scores, torch.where(together, high, low), strength.expand_as(high))


# Scores per row block of `row_extremes`: about 8 MB in float32, so each block's matmul output
# is still in cache when its max and min are read (on CPU 2-3x faster than one big matmul).
BLOCK_ELEMENTS = 2**21


def row_extremes(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row max and min of q k^T without holding it: q (n, H, N, d), k (n, H, M, d) -> two
    (n, H, N, 1) tensors in q's dtype. CPU fp32 takes oneDNN per head where `pww_ldm.gemm`
    picks it (MKL's batched sgemm is its slow path there), else one batched matmul a block."""
    n, heads, rows, _ = q.shape
    high, low = q.new_empty(n, heads, rows, 1), q.new_empty(n, heads, rows, 1)
    if resolve_backend("auto") == "onednn" and onednn_applies(q, k):
        block = max(1, BLOCK_ELEMENTS // k.shape[-2])
        for b in range(n):
            for h in range(heads):
                # one copy of the head's keys, not one per block (onednn_matmul_t copies strided ones)
                keys, queries = k[b, h].contiguous(), q[b, h].contiguous()
                for i in range(0, rows, block):
                    scores = onednn_matmul_t(queries[i:i + block], keys)
                    high[b, h, i:i + block] = scores.amax(dim=-1, keepdim=True)
                    low[b, h, i:i + block] = scores.amin(dim=-1, keepdim=True)
        return high, low
    block = max(1, BLOCK_ELEMENTS // (n * heads * k.shape[-2]))
    keys = k.transpose(-1, -2)
    for i in range(0, rows, block):
        scores = torch.matmul(q[:, :, i:i + block], keys)
        high[:, :, i:i + block] = scores.amax(dim=-1, keepdim=True)
        low[:, :, i:i + block] = scores.amin(dim=-1, keepdim=True)
    return high, low


class _DenseModulation:
    """Shared timing and size regularisation of the two DenseDiffusion plug-ins."""

    acts_on = "cond"
    kind = ""

    def __init__(self, masks: Sequence[torch.Tensor], clock: StepClock,
                 alphas_cumprod: torch.Tensor, weight: float, sizereg: float, window: float) -> None:
        if not 0 < window <= 1:
            raise RegionError(f"the modulation window is a fraction of the steps in (0, 1], got "
                              f"{window}")
        self.masks = [m.float() for m in masks]
        self.clock, self.alphas_cumprod = clock, alphas_cumprod.float().cpu()
        self.weight, self.sizereg, self.window = float(weight), float(sizereg), float(window)
        self._cache: dict[tuple, Any] = {}

    def hooks(self, kind: str) -> tuple[bool, bool]:
        """(modifies scores, observes probs): its own kind, during the window, weight != 0."""
        active = kind == self.kind and self.weight != 0 and self.clock.fraction() < self.window
        return (active, False)

    def _ids(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment ids (N,) and size_i = 1 - sizereg * |seg(i)| / N, (N,) float."""
        if grid not in self._cache:
            ids = segment_ids(self.masks, grid)
            counts = torch.bincount(ids, minlength=len(self.masks) + 1).float()
            self._cache[grid] = (ids, 1 - self.sizereg * counts[ids] / ids.numel())
        return self._cache[grid]

    def strength(self, call: Any, size: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(n, 1, N, 1) = weight * (t / 1000)^5 * size_i for the rows of `call`."""
        t = sigma_to_t(call.sigma.float().cpu(), self.alphas_cumprod)
        treg = (t / 1000) ** 5
        out = self.weight * treg.view(-1, 1, 1, 1) * size.view(1, 1, -1, 1)
        return out.to(like.device, like.dtype)

    def observe(self, probs: torch.Tensor, call: Any) -> None:
        """DenseDiffusion observes nothing."""


class DenseSelfAttention(_DenseModulation):
    """Self-attention modulation: cells of one segment attend more to each other.

    masks: the regions' (H, W) masks; clock: the sampling step; alphas_cumprod (T,) of the model.
    """

    kind = "self"

    def __init__(self, masks: Sequence[torch.Tensor], clock: StepClock, alphas_cumprod: torch.Tensor,
                 weight: float = DEFAULT_SELF_WEIGHT, sizereg: float = DEFAULT_SIZEREG,
                 window: float = DEFAULT_WINDOW) -> None:
        super().__init__(masks, clock, alphas_cumprod, weight, sizereg, window)

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        """scores (n, heads, N, N) -> modulated scores."""
        if call.grid is None:
            raise RegionError("self-attention modulation needs the layer's grid")
        ids, size = self._ids(call.grid)
        key = ("together", call.grid, str(scores.device))
        if key not in self._cache:
            ids_d = ids.to(scores.device)
            self._cache[key] = ids_d[:, None] == ids_d[None, :]
        return modulate(scores, self._cache[key], self.strength(call, size, scores))

    def augment_qk(self, q: torch.Tensor, k: torch.Tensor, call: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The modulation as augmented queries and keys, for the layer's fused kernel.

        q, k (n, heads, N, d) -> q', k' (n, heads, N, d + S + 1), S + 1 the segments. With a_i
        the strength and M_ij = [seg(i) = seg(j)], the update S + a (target - S) is
        (1 - a_i) S_ij + a_i (max_i - min_i) M_ij + a_i min_i; the last term is constant along
        the row, so the softmax ignores it, and M_ij is the dot product of one-hot codes:
        q'_i = [(1 - a_i) q_i, a_i (max_i - min_i) code_i], k'_j = [k_j, code_j].
        """
        if call.grid is None:
            raise RegionError("self-attention modulation needs the layer's grid")
        ids, size = self._ids(call.grid)
        compute = torch.promote_types(q.dtype, torch.float32)
        q32, k32 = q.to(compute), k.to(compute)
        high, low = row_extremes(q32, k32)
        strength = self.strength(call, size, high)
        key = ("codes", call.grid, str(q.device), compute)
        if key not in self._cache:  # (N, S + 1), the same at every step of this grid
            self._cache[key] = F.one_hot(ids.to(q.device), len(self.masks) + 1).to(compute)
        codes = self._cache[key]
        q_aug = torch.cat([(1 - strength) * q32, strength * (high - low) * codes], dim=-1)
        k_aug = torch.cat([k32, codes.expand(*k.shape[:2], -1, -1)], dim=-1)
        return q_aug.to(q.dtype), k_aug.to(k.dtype)

    def __repr__(self) -> str:
        return f"DenseSelfAttention(w={self.weight:g}, sizereg={self.sizereg:g}, window={self.window:g})"


class DenseCrossAttention(_DenseModulation):
    """Cross-attention modulation: a region's cells attend more to its label's tokens.

    token_columns: per mask, the token columns of its label (77*k axis).
    """

    kind = "cross"

    def __init__(self, masks: Sequence[torch.Tensor], token_columns: Sequence[Sequence[int]],
                 clock: StepClock, alphas_cumprod: torch.Tensor,
                 weight: float = DEFAULT_CROSS_WEIGHT, sizereg: float = DEFAULT_SIZEREG,
                 window: float = DEFAULT_WINDOW) -> None:
        if len(token_columns) != len(masks):
            raise RegionError("DenseCrossAttention needs one list of token columns per mask")
        super().__init__(masks, clock, alphas_cumprod, weight, sizereg, window)
        self.token_columns = [tuple(c) for c in token_columns]

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        """scores (n, heads, N, T) -> modulated scores."""
        if call.grid is None:
            raise RegionError("cross-attention modulation needs the layer's grid")
        ids, size = self._ids(call.grid)
        n_tokens = scores.shape[-1]
        key = ("together", call.grid, n_tokens, str(scores.device))
        if key not in self._cache:
            together = torch.zeros(ids.numel(), n_tokens, dtype=torch.bool)
            for s, cols in enumerate(self.token_columns):
                rows = (ids == s).nonzero()[:, 0]
                if cols and rows.numel():
                    together[rows[:, None], torch.tensor(cols)[None, :]] = True
            self._cache[key] = together.to(scores.device)
        return modulate(scores, self._cache[key], self.strength(call, size, scores))

    def __repr__(self) -> str:
        return f"DenseCrossAttention(w={self.weight:g}, sizereg={self.sizereg:g}, window={self.window:g})"
