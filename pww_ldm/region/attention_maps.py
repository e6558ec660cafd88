"""Attention maps: where each painted label's words attend, aggregated DAAM-style.

DAAM (Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross Attention")
sums a word's cross-attention probabilities over heads, over the layers (each upsampled to one
grid) and over the sampling steps. `AttentionMaps` is an observing plug-in doing that for the
conditional rows: per group of token columns (a region's label, or one token), the softmax
probabilities (after every score modifier, so what the network really used) are averaged over
heads, summed over the group's columns, upsampled bilinearly to the latent grid and averaged
over layers with weight (h * w) / (H * W) -- the layer's share of query pixels, so a coarse
8 x 8 layer counts a quarter of a 16 x 16 one -- and over the steps of a chosen range.
The result per group is an (n, H, W) map of attention mass per latent cell (values in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .errors import RegionError
from .timing import StepClock


class AttentionMaps:
    """Observer plug-in: per group of token columns, the aggregated cross-attention map.

    groups: name -> token columns on the 77*k axis; negative columns count from the end (the
    per-region-prompt chunks appended after the prompt). latent_hw: (H, W) latent grid.
    steps: (first, stop) step indices to aggregate (needs `clock`), None = every step.
    """

    acts_on = "cond"

    def __init__(self, groups: Mapping[str, Sequence[int]], latent_hw: tuple[int, int],
                 clock: StepClock | None = None, steps: tuple[int, int] | None = None) -> None:
        if not groups:
            raise RegionError("attention maps need at least one group of token columns")
        empty = [name for name, cols in groups.items() if not cols]
        if empty:
            raise RegionError(f"attention map groups {empty} have no token columns")
        if steps is not None and (clock is None or not 0 <= steps[0] < steps[1]):
            raise RegionError(f"step range {steps}: give a StepClock and 0 <= first < stop")
        self.names = list(groups)
        self.columns = [tuple(int(c) for c in groups[name]) for name in self.names]
        self.latent_hw = tuple(latent_hw)
        self.clock, self.steps = clock, steps
        self._sum: torch.Tensor | None = None
        self._weight = 0.0
        self._selectors: dict[tuple[int, str], torch.Tensor] = {}

    def hooks(self, kind: str) -> tuple[bool, bool]:
        """(modifies scores, observes probs): observes cross-attention only."""
        return (False, kind == "cross")

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        """Observers leave the scores alone."""
        return scores

    def _selector(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """(T, G) 0/1 matrix: column t belongs to group g (negative columns wrap around T)."""
        key = (n_tokens, str(device))
        if key not in self._selectors:
            sel = torch.zeros(n_tokens, len(self.columns))
            for g, cols in enumerate(self.columns):
                if any(not -n_tokens <= c < n_tokens for c in cols):
                    raise RegionError(f"attention map group {self.names[g]!r} has columns {cols} "
                                      f"outside the {n_tokens} token columns")
                sel[[c % n_tokens for c in cols], g] = 1.0
            self._selectors[key] = sel.to(device)
        return self._selectors[key]

    def _counts(self) -> bool:
        if self.steps is None or self.clock is None:
            return True
        return self.steps[0] <= self.clock.step < self.steps[1]

    def observe(self, probs: torch.Tensor, call: Any) -> None:
        """probs (n, heads, h*w, T) -> add this layer's (n, G, H, W) maps into the running sum."""
        if call.grid is None:
            raise RegionError("attention maps need the layer's grid (UNetContext.at_grid)")
        if not self._counts():
            return
        h, w = call.grid
        n, _, n_pixels, n_tokens = probs.shape
        mean = probs.float().mean(dim=1)  # (n, N, T): DAAM averages the heads
        grouped = (mean @ self._selector(n_tokens, probs.device)).transpose(1, 2)  # (n, G, N)
        maps = grouped.reshape(n, len(self.columns), h, w)
        big_h, big_w = self.latent_hw
        if (h, w) != (big_h, big_w):
            maps = F.interpolate(maps, size=(big_h, big_w), mode="bilinear", align_corners=False)
        weight = h * w / (big_h * big_w)
        self._sum = weight * maps if self._sum is None else self._sum + weight * maps
        self._weight += weight

    def maps(self) -> dict[str, torch.Tensor]:
        """name -> (n, H, W) float32 map (the weighted mean over layers and steps), on the CPU.

        Raises RegionError when no layer was observed (e.g. a step range after the last step).
        """
        if self._sum is None:
            raise RegionError("no attention was observed: the step range covers no sampling step "
                              "or the model has no cross-attention")
        mean = (self._sum / self._weight).cpu()
        return {name: mean[:, g] for g, name in enumerate(self.names)}

    def reset(self) -> None:
        """Forget what was observed (reuse for another generation)."""
        self._sum, self._weight = None, 0.0

    def __repr__(self) -> str:
        return f"AttentionMaps({self.names}, latent={self.latent_hw}, steps={self.steps})"


def region_groups(regions: Sequence[Any], per_token: bool = False) -> dict[str, tuple[int, ...]]:
    """Groups of the painted regions: label -> its token columns (of the first image); with
    per_token also "label[k]" -> the k-th column alone. Regions without columns are skipped;
    a label painted by two colours appears once."""
    groups: dict[str, tuple[int, ...]] = {}
    for region in regions:
        cols = region.token_positions[0] if region.token_positions else ()
        if not cols or region.label in groups:
            continue
        groups[region.label] = tuple(cols)
        if per_token and len(cols) > 1:
            groups.update({f"{region.label}[{k}]": (c,) for k, c in enumerate(cols)})
    return groups
