"""Seeded noise: one generator per image, so a batch equals the same images made one by one.

Image k of a batch with seeds [s, s+1, ...] owns a `torch.Generator` seeded with its own seed.
That generator draws the image's starting noise first and then, in order, every noise tensor an
ancestral / SDE sampler adds to that image. Nothing reads the global RNG, so batch size, other
images and unrelated code cannot change an image.

Generators live on the CPU by default: CPU `randn` gives the same numbers on every machine, so a
seed gives the same starting noise whether the model then runs on CPU or CUDA (draw, then move).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import InvalidSamplerArgumentError

_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # the range torch.Generator.manual_seed accepts


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Validate a list of per-image seeds (non-empty, integers in torch's seed range)."""
    seeds = list(seeds)
    if not seeds:
        raise InvalidSamplerArgumentError("seeds is empty: give one integer seed per image")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not _SEED_MIN <= s <= _SEED_MAX:
            raise InvalidSamplerArgumentError(
                f"seed {s!r} is not an integer in [{_SEED_MIN}, {_SEED_MAX}]; "
                "pass integer seeds such as 0, 1, 42"
            )
    return seeds


def make_generators(
    seeds: Sequence[int], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One `torch.Generator` per image on `device` (default CPU), seeded with that image's seed."""
    return [torch.Generator(device=device).manual_seed(s) for s in check_seeds(seeds)]


def draw_noise(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(n, *shape) standard normal noise, row k drawn from generators[k].

    Drawn in float32 on each generator's own device (so the numbers do not depend on `dtype`
    or `device`), then moved to `device` and cast to `dtype`.
    """
    rows = [
        torch.randn(tuple(shape), generator=g, device=g.device, dtype=torch.float32)
        for g in generators
    ]
    noise = torch.stack(rows)
    return noise.to(device=device if device is not None else noise.device, dtype=dtype)


def initial_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(n, *shape) starting noise for seeds[0..n-1]; equal to the first draw of `make_generators`.

    Row k is the same tensor whatever the other seeds are, so a batch of seeds equals
    single runs of each seed.
    """
    return draw_noise(make_generators(seeds, generator_device), shape, device, dtype)


class BatchedNoiseSampler:
    """k-diffusion noise sampler over per-image generators: `ns(sigma, sigma_next)` -> (n, *shape).

    Each call returns independent standard normal noise (unit variance: the samplers scale it
    by the interval's sigma_up themselves), row k from generators[k]. The sigmas are accepted
    for k-diffusion's interface and not used: draws are independent, not a Brownian tree.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.generators = list(generators)
        self.shape = tuple(shape)
        self.device = device
        self.dtype = dtype

    @classmethod
    def like(cls, x: torch.Tensor, generators: Sequence[torch.Generator]) -> BatchedNoiseSampler:
        """A sampler producing noise shaped, placed and typed like x (n, C, h, w)."""
        if x.shape[0] != len(generators):
            raise InvalidSamplerArgumentError(
                f"{len(generators)} generators for a batch of {x.shape[0]} images: "
                "give one generator (seed) per image"
            )
        return cls(generators, x.shape[1:], x.device, x.dtype)

    def __call__(self, sigma: Any = None, sigma_next: Any = None) -> torch.Tensor:
        """(n, *shape) standard normal noise for the step sigma -> sigma_next."""
        return draw_noise(self.generators, self.shape, self.device, self.dtype)


class BrownianNoiseSampler:
    """Brownian-motion noise over sigma, per image: `ns(sigma, sigma_next)` -> (n, *shape).

    Returns (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|) for one Brownian path W
    per image, like k-diffusion's `BrownianTreeNoiseSampler` (which needs torchsde): each call
    is standard normal, and increments over nested or overlapping intervals are correlated as
    Brownian motion requires. DPM++ SDE (Lu et al. 2022) relies on that: its two noises within
    a step are over nested intervals, and with independent draws it is only first order in
    distribution. New points are drawn from the image's generator by Brownian bridge between
    known neighbours (or a plain increment beyond them), so the law equals a Brownian tree's;
    the numbers differ from torchsde's. Memory: one (n, *shape) tensor per distinct sigma asked.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.noise = BatchedNoiseSampler(generators, shape, device, dtype)
        self.points: dict[float, torch.Tensor] = {}

    def _w(self, c: float) -> torch.Tensor:
        if c in self.points:
            return self.points[c]
        lower = max((k for k in self.points if k < c), default=None)
        upper = min((k for k in self.points if k > c), default=None)
        if lower is None and upper is None:
            n, ns = len(self.noise.generators), self.noise
            w = torch.zeros((n, *ns.shape), device=ns.device, dtype=ns.dtype)  # origin of W
        elif upper is None:
            w = self.points[lower] + (c - lower) ** 0.5 * self.noise()
        elif lower is None:
            w = self.points[upper] + (upper - c) ** 0.5 * self.noise()
        else:  # Brownian bridge between the neighbours
            frac = (c - lower) / (upper - lower)
            mean = self.points[lower] + frac * (self.points[upper] - self.points[lower])
            w = mean + ((c - lower) * (upper - c) / (upper - lower)) ** 0.5 * self.noise()
        self.points[c] = w
        return w

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        """(n, *shape) standard normal increment of each image's path from sigma to sigma_next."""
        a, b = float(sigma), float(sigma_next)
        w_a, w_b = self._w(a), self._w(b)
        return (w_b - w_a) / abs(b - a) ** 0.5


def default_brownian_noise_sampler(x: torch.Tensor) -> BrownianNoiseSampler:
    """A `BrownianNoiseSampler` shaped like x (n, ...), each row seeded from the global RNG
    (k-diffusion's default for the SDE samplers: a Brownian tree with a random seed)."""
    seeds = torch.randint(0, 2**63 - 1, (x.shape[0],)).tolist()
    return BrownianNoiseSampler(make_generators(seeds), x.shape[1:], x.device, x.dtype)
