"""Optional approximations of the UNet, off by default: token merging and feature caching.

Token merging (ToMe for SD; Bolya & Hoffman 2023, "Token Merging for Fast Stable Diffusion"):
before each self-attention (attn1) of the transformer blocks at the finest grids, the `tome`
fraction of the layer's tokens is merged into similar tokens by bipartite soft matching (one
random destination per 2x2 cell), attention runs on the fewer tokens, and its output is copied
back to every merged token. Cross-attention, and so Paint-with-Words' score bias, sees every
pixel as before. The mechanics are in `pww_ldm.models.token_merge`.

Feature caching (DeepCache; Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for
Free"): every `deepcache`-th UNet call runs the whole UNet and keeps the feature entering the
output block that pairs with input block `deepcache_branch` (what the deep part computed); the
calls in between run only input blocks 0..branch and their output blocks, on the kept feature.
The interval counts UNet calls: one per step for Euler, Euler a, DDIM, DPM++ 2M; two for Heun.

`Approximations` are the settings (checked when made, before any model loads); `ApproxRun` is
the state of one sampling run (the call count, the kept feature, ToMe's seeded generator). The
sampler makes a fresh ApproxRun for every generation and hands it to each UNet call in the
UNetContext, so no image ever sees another's cache and a run is reproducible. This module
imports nothing of the package: the sampler and the models both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TOME_DOWNSAMPLES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Approximations:
    """Settings of the optional approximations; the defaults are the exact UNet.

    tome: fraction of each merged layer's tokens merged away before self-attention, in [0, 1)
        (0 = off; tomesd's default 0.5; at most 3/4 of the tokens, the non-destination ones, merge).
    tome_max_downsample: merge at the grids downsampled at most this much (1 = only the finest
        grid, tomesd's default; 2, 4 or 8 also the coarser ones).
    tome_stride: (sy, sx) of the cells that each hold one random destination token.
    tome_seed: seed of the generator drawing the destinations (fresh for every generation).
    deepcache: refresh interval N in UNet calls (0 or 1 = off: every call runs the whole UNet).
    deepcache_branch: the skip branch whose blocks still run on cached calls: input blocks
        0..branch and their output blocks (SD v1: 0..11; 1 = the first transformer level's first
        block, DeepCache's default for SD v1.5).
    """

    tome: float = 0.0
    tome_max_downsample: int = 1
    tome_stride: tuple[int, int] = (2, 2)
    tome_seed: int = 0
    deepcache: int = 0
    deepcache_branch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.tome, (int, float)) or not 0.0 <= float(self.tome) < 1.0:
            raise ValueError(f"tome (the merged fraction of tokens) must be in [0, 1), got "
                             f"{self.tome!r}; try 0.5, or 0 for off")
        if self.tome_max_downsample not in TOME_DOWNSAMPLES:
            raise ValueError(f"tome_max_downsample must be one of {TOME_DOWNSAMPLES}, got "
                             f"{self.tome_max_downsample!r}")
        stride = tuple(self.tome_stride)
        if len(stride) != 2 or not all(isinstance(s, int) and s >= 1 for s in stride) or stride == (1, 1):
            raise ValueError(f"tome_stride must be two positive ints (sy, sx), not (1, 1), got "
                             f"{self.tome_stride!r}; try (2, 2)")
        object.__setattr__(self, "tome_stride", stride)
        for name in ("deepcache", "deepcache_branch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}"
                                 + ("; try 3, or 0 for off" if name == "deepcache" else ""))

    @property
    def active(self) -> bool:
        """Whether anything is approximated (False: the exact UNet, bit for bit)."""
        return self.tome > 0 or self.deepcache > 1

    def parameters(self) -> dict[str, str]:
        """The settings-line entries (PNG `parameters`) of the active approximations."""
        out = {}
        if self.tome > 0:
            out["ToMe"] = f"{self.tome:g}" + (f" (max downsample {self.tome_max_downsample})"
                                              if self.tome_max_downsample != 1 else "")
        if self.deepcache > 1:
            out["DeepCache"] = f"{self.deepcache} (branch {self.deepcache_branch})"
        return out


def start_run(settings: Approximations | None) -> ApproxRun | None:
    """The state of a new sampling run; None when nothing is approximated (the exact path)."""
    return ApproxRun(settings) if settings is not None and settings.active else None


class ApproxRun:
    """State of the approximations during one sampling run (module doc).

    The UNet calls `start_call` once per forward, which counts the call and says whether it may
    reuse the kept deep feature; its transformer blocks ask `merges(grid)` and draw ToMe's
    destinations from `generator`.
    """

    def __init__(self, settings: Approximations) -> None:
        self.settings = settings
        self.calls = 0
        self.generator = torch.Generator("cpu").manual_seed(settings.tome_seed)
        self._merge_grids: frozenset[tuple[int, int]] = frozenset()
        self._deep: torch.Tensor | None = None
        self._key: tuple | None = None

    def start_call(self, grids: Sequence[tuple[int, int]], key: tuple) -> torch.Tensor | None:
        """Begin a UNet call. grids: the UNet's attention grids for this input, finest first;
        key: what the kept feature is only valid for (the input's shape, dtype, device).

        Returns the kept deep feature when this call is a cached one, else None (the call runs the
        whole UNet and must `keep` the feature if `caching`)."""
        levels = [g for i, g in enumerate(grids) if 2 ** i <= self.settings.tome_max_downsample]
        self._merge_grids = frozenset(levels) if self.settings.tome > 0 else frozenset()
        index, self.calls = self.calls, self.calls + 1
        if self.caching and index % self.settings.deepcache and key == self._key:
            return self._deep
        self._deep, self._key = None, key  # a refresh: the feature of this call replaces it
        return None

    @property
    def caching(self) -> bool:
        """Whether DeepCache is on (full calls keep their deep feature)."""
        return self.settings.deepcache > 1

    @property
    def kept(self) -> torch.Tensor | None:
        """The deep feature (B, C, h, w) kept by the last full call, None before one."""
        return self._deep

    def keep(self, feature: torch.Tensor) -> None:
        """Keep the deep feature (B, C, h, w) of a full call for the cached calls after it."""
        self._deep = feature

    def merges(self, grid: tuple[int, int] | None) -> bool:
        """Whether the self-attention of a layer on this (h, w) grid merges tokens."""
        return grid in self._merge_grids
