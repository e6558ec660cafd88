"""Per-region prompts: a region's own text conditions its pixels and no others.

Method (one UNet call per step, whatever the number of regions): each region prompt is encoded
on its own and appended to the conditioning as an extra 77-token chunk (its negative prompt, or
the empty prompt, likewise to the unconditional rows), so cross-attention runs once over
77 * (k + R) token columns. This plug-in then masks the chunks by composition in probability
space: the scores of region r's chunk get + log(m_r) / scale, m_r the region's coverage of each
grid cell, so after the softmax a cell attends to r's tokens in proportion to its coverage and a
cell outside the region (m_r = 0, score -inf) attends exactly as without the chunk. Inside, the
chunk's bias tokens (its end-of-text token by default, or its words; BIAS_TOKENS) also get the
Paint-with-Words bias f(w * m_r, sigma, QK^T) of the weight function. On the unconditional
rows a region's negative-prompt chunk is visible inside it only; a region without a negative
prompt has its chunk hidden everywhere (the plain unconditional).
base (Regional Prompter's "base ratio"): inside the regions the prompt's own columns get
+ log(1 - (1 - base) * u) / scale, u the cells' coverage by any region, so a covered cell gives
the prompt `base` times the probability mass it would (1 = unchanged, the default; 0 = inside a
region only its own prompt is attended). The prompt's end-of-text and padding tokens carry every
word of it, objects included: measured on the region benchmark, they draw objects outside their
regions; a low base keeps the rest of the prompt out of the regions.

cover ("touch", the default, or "area"): how a region reaches a grid cell. "area" is the
fraction of the cell's pixels it covers; "touch" is 1 in every cell it covers more than
TOUCH_FRACTION of, else 0. At the coarse grids (cells of 32-64 px at 512 px) a star or a
triangle covers a small share of its cells, so under "area" the prompt's words outweigh the
region's there and the object is often not drawn at all: on the region benchmark "touch" draws
0.88 / 0.84 of the objects (training-like / hard layouts) against 0.84 / 0.76.

Why not Regional Prompter's per-region attention with mask composition of the outputs: it runs
one cross-attention per region (R times the cross-attention cost) and leaves the global prompt's
words active inside every region; the appended chunks cost one attention over R * 77 more
columns and let the region's tokens compete with the prompt's in one softmax, as DenseDiffusion
(Kim et al. 2023) does with its individually encoded segment captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import RegionError
from .masks import grid_level, resample_mask
from .weighting import WeightFunction

CHUNK = 77
COVERS = ("touch", "area")
DEFAULT_COVER = "touch"  # what FeatureOptions and the scripts use (this class defaults to exact area)
TOUCH_FRACTION = 0.05  # a cell counts as touched above this share of its pixels
# Which tokens of a region's own prompt get the Paint-with-Words bias: its words, its words and
# its end-of-text token (which CLIP's causal encoder fills with the whole region prompt), or the
# end-of-text token alone (the default: on the region benchmark it draws and places the objects
# best, stars above all; README "What the options do on the region benchmark").
BIAS_TOKENS = ("words", "words+end", "end")
DEFAULT_BIAS_TOKENS = "end"


def bias_positions(words: tuple[int, ...], bias_tokens: str) -> tuple[int, ...]:
    """Chunk positions that get the bias: `words` are a one-chunk prompt's word positions
    (1..n, contiguous; BOS is 0), so its end-of-text token sits at n + 1."""
    if bias_tokens not in BIAS_TOKENS:
        raise RegionError(f"region bias tokens are one of {BIAS_TOKENS}, not {bias_tokens!r}")
    end = (max(words) + 1,)
    return {"words": words, "words+end": words + end, "end": end}[bias_tokens]


@dataclass(frozen=True)
class PromptRegion:
    """One region's chunk on the token axis, counted from the end of the axis.

    mask: (H, W) coverage in [0, 1] at image resolution. chunk: index of its chunk among the R
    appended ones (columns T - 77 * (R - chunk) ... + 77). words: positions inside the chunk of
    the tokens that get the bias (BOS is 0; see bias_positions). weight: their Paint-with-Words
    weight inside.
    visible: False hides the chunk everywhere (an unconditional chunk with no negative prompt).
    """

    mask: torch.Tensor
    chunk: int
    words: tuple[int, ...]
    weight: float = 1.0
    visible: bool = True


class RegionPrompts:
    """Plug-in masking the appended region chunks of `acts_on` rows ("cond" or "uncond").

    n_chunks: R, the number of appended chunks. weight_function: the Paint-with-Words bias
    function (batched, as `get_weight_function` returns) for the region words; None = no bias.
    height, width: image size in px (grids are found from it as the RegionContext does).
    base: the prompt's share inside the regions (module doc), in [0, 1]. cover: "touch" or
    "area", how a region reaches a grid cell (module doc).
    """

    def __init__(self, regions: Sequence[PromptRegion], n_chunks: int, height: int, width: int,
                 weight_function: WeightFunction | None, acts_on: str = "cond",
                 base: float = 1.0, cover: str = "area") -> None:
        if acts_on not in ("cond", "uncond"):
            raise RegionError(f"region prompts act on 'cond' or 'uncond' rows, not {acts_on!r}")
        if any(not 0 <= r.chunk < n_chunks for r in regions):
            raise RegionError(f"a region chunk index is outside the {n_chunks} appended chunks")
        if not 0.0 <= base <= 1.0:
            raise RegionError(f"the base ratio is the prompt's share inside the regions, in [0, 1]; "
                              f"got {base}")
        if cover not in COVERS:
            raise RegionError(f"a region's cover is one of {COVERS}, not {cover!r}")
        self.regions, self.n_chunks, self.base = list(regions), n_chunks, float(base)
        self.cover = cover
        self.height, self.width = height, width
        self.weight_function, self.acts_on = weight_function, acts_on
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def hooks(self, kind: str) -> tuple[bool, bool]:
        """(modifies scores, observes probs): cross-attention scores only."""
        return (kind == "cross", False)

    def _tables(self, grid: tuple[int, int], n_tokens: int, scale: float, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, T) log-coverage / scale on the chunks (0 elsewhere) and (1, 1, N, T) word weights."""
        key = (grid, n_tokens, scale, str(device), dtype)  # self.cover is fixed at init
        if key in self._cache:
            return self._cache[key]
        first = n_tokens - CHUNK * self.n_chunks
        if first < CHUNK:
            raise RegionError(f"{n_tokens} token columns cannot hold the prompt and "
                              f"{self.n_chunks} region chunks of 77")
        level = grid_level(self.height, self.width, grid)
        n_pixels = grid[0] * grid[1]
        log_cover = torch.zeros(n_pixels, n_tokens, dtype=torch.float64)
        words = torch.zeros(n_pixels, n_tokens, dtype=torch.float64)
        union = torch.zeros(n_pixels, 1, dtype=torch.float64)
        for r in self.regions:
            start = first + CHUNK * r.chunk
            cover = resample_mask(r.mask, grid, "area", level).reshape(-1, 1).double()
            if self.cover == "touch":
                cover = (cover > TOUCH_FRACTION).double()
            if not r.visible:
                cover = torch.zeros_like(cover)
            union = torch.maximum(union, cover)
            # log(0) = -inf: outside the region the chunk's probabilities are exactly 0.
            log_cover[:, start:start + CHUNK] = cover.log() / scale
            for j in r.words:
                words[:, start + j] = r.weight * cover[:, 0]
        if self.base < 1.0:
            log_cover[:, :first] = (1 - (1 - self.base) * union).log() / scale
        has_words = self.weight_function is not None and bool(words.any())
        tables = (log_cover.to(device, dtype),
                  words.to(device, dtype)[None, None] if has_words else None)
        self._cache[key] = tables
        return tables

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        """scores (n, heads, h*w, T) unscaled -> + log-coverage / scale on the region chunks and
        the weight function's bias on the region words (computed on the incoming scores)."""
        if call.grid is None:
            raise RegionError("region prompts need the layer's grid (UNetContext.at_grid)")
        log_cover, words = self._tables(call.grid, scores.shape[-1], call.scale, scores.device,
                                        scores.dtype)
        out = scores + log_cover
        if words is not None:
            out = out + self.weight_function(words, call.sigma, scores)
        return out

    def observe(self, probs: torch.Tensor, call: Any) -> None:
        """Region prompts observe nothing."""

    def __repr__(self) -> str:
        return f"RegionPrompts({len(self.regions)} regions, {self.n_chunks} chunks, {self.acts_on})"
