"""RegionContext: everything Paint-with-Words needs at generation time, built once.

The pipeline builds it from the prompt(s), the colour map and the colour context; the
Paint-with-Words plug-in (`region.plugin`) calls `bias` with each cross-attention layer's scores
and grid; the sampler calls `initial_noise` on its starting noise. Pure data and math: nothing
here knows the network.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ColorMapError, ColorNotInMapError, RegionError
from .masks import RESAMPLE_MODES, color_mask, gaussian_blur, grid_level, resample_mask, to_rgb
from .noise import region_noise
from .parse import Region, hex_color, parse_color_context
from .tokens import Tokenizer, label_positions
from .weighting import WeightFunction, get_weight_function

N_TOKENS = 77  # one CLIP chunk; long prompts have 77 * k token columns


def _map_colors(rgb: np.ndarray, limit: int = 12) -> str:
    """The most frequent colours of an (H, W, 3) map, for error messages."""
    colors, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    order = np.argsort(-counts)[:limit]
    shown = ", ".join(hex_color(tuple(int(v) for v in colors[i])) for i in order)
    return shown + (f" (and {len(colors) - limit} more)" if len(colors) > limit else "")


class RegionContext:
    """Per-image pixel masks and token spans of the painted regions, resampled lazily per grid.

    n_images: 1 when every image of the batch shares prompt and map (broadcast), else the number
    of prompts. regions: resolved `Region`s (token_positions has one tuple per image, mask (H, W)).
    """

    def __init__(
        self,
        regions: Sequence[Region],
        n_images: int,
        height: int,
        width: int,
        weight_function: WeightFunction,
        resample: str = "area",
    ) -> None:
        self.regions = list(regions)
        self.n_images = n_images
        self.height, self.width = height, width
        self.weight_function = weight_function
        self.resample = resample
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def build(
        cls,
        prompt_or_prompts: str | Sequence[str],
        color_map_image: Image.Image | None,
        color_context: Any,
        *,
        width: int,
        height: int,
        tokenizer: Tokenizer | None = None,
        weight_function: str | Callable = "max",
        weight_scale: float | None = None,
        resample: str = "area",
        strict: bool = True,
    ) -> RegionContext:
        """Parse the colour context, cut the masks out of the map and align labels with tokens.

        color_context: any form `parse_color_context` accepts. The map is converted to RGB and
        resized (nearest, with a warning) to width x height. strict=False turns "colour not in
        the map" into a warning (the region then paints nothing). Raises RegionError subclasses.
        """
        single = isinstance(prompt_or_prompts, str)
        prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
        if not prompts:
            raise RegionError("no prompt given")
        if len(set(prompts)) == 1:
            prompts = prompts[:1]  # same tokens for every image: one row broadcasts
        if width % 8 or height % 8 or width <= 0 or height <= 0:
            raise RegionError(f"image size {width}x{height} px: both must be multiples of 8")
        if resample not in RESAMPLE_MODES:
            raise RegionError(f"unknown resampling {resample!r}; valid: {list(RESAMPLE_MODES)}")
        fn = get_weight_function(weight_function, weight_scale)
        parsed = parse_color_context(color_context)
        if not parsed:
            return cls([], len(prompts), height, width, fn, resample)
        if color_map_image is None:
            raise ColorMapError("a colour context was given but no colour map image")
        if tokenizer is None:
            from ..models.tokenizer import get_tokenizer

            tokenizer = get_tokenizer()
        rgb = to_rgb(color_map_image, (width, height))
        regions = []
        for region in parsed:
            mask = color_mask(rgb, region.color)
            if not mask.any():
                message = (
                    f"colour {hex_color(region.color)} {region.color} of region "
                    f"{region.label!r} is not in the colour map; the map's colours are: "
                    f"{_map_colors(rgb)}"
                )
                if strict:
                    raise ColorNotInMapError(message)
                warnings.warn(message + "; the region paints nothing", stacklevel=2)
            positions = tuple(
                label_positions(p, region.label, tokenizer, region.occurrence) for p in prompts
            )
            regions.append(
                replace(region, token_positions=positions, mask=gaussian_blur(mask, region.blur))
            )
        return cls(regions, len(prompts), height, width, fn, resample)

    @property
    def is_active(self) -> bool:
        """Whether any region biases attention (a non-zero weight on a non-empty mask).

        Seeds act through `initial_noise` whether or not the context is active.
        """
        return any(r.mask is not None and ((r.weight != 0 and r.mask.any())
                                           or (r.outside != 0 and not r.mask.all()))
                   for r in self.regions)

    def weight_map(
        self,
        h: int,
        w: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        n_tokens: int = N_TOKENS,
    ) -> torch.Tensor:
        """(n_images, h*w, n_tokens) sum over regions of weight * mask resampled to the (h, w) grid.

        Rows are grid cells in row-major order (row * w + col); a region fills only its label's
        token columns (absolute positions in the 77 * k token axis of a chunked prompt). Cached
        per (h, w, n_tokens, device, dtype).
        """
        key = (h, w, n_tokens, str(torch.device(device or "cpu")), dtype)
        if key not in self._cache:
            base_key = (h, w, n_tokens, "cpu", torch.float32)
            if base_key not in self._cache:
                self._cache[base_key] = self._compute_weight_map(h, w, n_tokens)
            self._cache[key] = self._cache[base_key].to(device=device, dtype=dtype)
        return self._cache[key]

    def _compute_weight_map(self, h: int, w: int, n_tokens: int) -> torch.Tensor:
        out = torch.zeros(self.n_images, h * w, n_tokens)
        level = grid_level(self.height, self.width, (h, w)) if self.resample == "area" else None
        for region in self.regions:
            if (region.weight == 0 and region.outside == 0) or region.mask is None:
                continue
            cells = resample_mask(region.mask, (h, w), self.resample, level).reshape(-1, 1)
            weights = region.weight * cells + region.outside * (1 - cells)
            for i, positions in enumerate(region.token_positions):
                if positions and max(positions) >= n_tokens:
                    raise RegionError(f"region {region.label!r} paints token {max(positions)} but "
                                      f"the attention has only {n_tokens} token columns")
                out[i][:, list(positions)] += weights  # overlapping regions add up
        return out

    def prepare(self, grids: Sequence[tuple[int, int]], device: torch.device | str,
                dtype: torch.dtype = torch.float32, n_tokens: int = N_TOKENS) -> None:
        """Compute the weight maps of these (h, w) grids now, so no sampling step (and no
        torch.compile trace) ever resamples a mask. n_tokens: the conditioning's token count."""
        for h, w in grids:
            self.weight_map(h, w, device, dtype, n_tokens)

    def bias(self, qk: torch.Tensor, sigma: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Bias for the unscaled scores qk (n, heads, h*w, T) of the rows the regions apply to.

        T = 77 * chunks. sigma: (n,) noise level of each row. Returns a tensor broadcastable to
        qk (the weight function's output on weight_map(grid), broadcast over images when
        n_images == 1).
        """
        h, w = grid
        n, _, n_pixels, n_tokens = qk.shape
        if n_pixels != h * w or n_tokens % N_TOKENS:
            raise RegionError(f"scores {tuple(qk.shape)} do not fit grid {grid} x 77*k tokens")
        if self.n_images not in (1, n):
            raise RegionError(f"region context has {self.n_images} images, attention has {n} rows")
        weights = self.weight_map(h, w, qk.device, qk.dtype, n_tokens)[:, None]  # (n_images, 1, N, T)
        return self.weight_function(weights, sigma, qk)

    def initial_noise(self, global_noise: torch.Tensor) -> torch.Tensor:
        """(n, C, H/8, W/8) noise with seeded regions blended in; `global_noise` itself if none."""
        latent_hw = (self.height // 8, self.width // 8)
        if tuple(global_noise.shape[-2:]) != latent_hw:
            raise RegionError(
                f"noise of shape {tuple(global_noise.shape)} does not match the latent {latent_hw} "
                f"of a {self.width}x{self.height} px image"
            )
        return region_noise(self.regions, global_noise, latent_hw)

    def describe(self) -> list[dict[str, Any]]:
        """The regions as colour-context records (the JSON the scripts take), for metadata.

        Each: {"color": "#rrggbb", "label", "weight"} plus seed, blur, outside and occurrence
        when they are not their defaults.
        """
        records = []
        for r in self.regions:
            record: dict[str, Any] = {"color": hex_color(r.color), "label": r.label, "weight": r.weight}
            optional = {"seed": r.seed, "blur": r.blur or None, "outside": r.outside or None,
                        "occurrence": r.occurrence}
            record.update({k: v for k, v in optional.items() if v is not None})
            records.append(record)
        return records

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.label!r}@{hex_color(r.color)} w={r.weight:g}" for r in self.regions)
        return f"RegionContext({self.width}x{self.height}, n_images={self.n_images}, [{parts}])"
