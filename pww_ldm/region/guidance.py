"""Attention guidance: move the early latents so each label's attention falls inside its region.

Paint-with-Words biases the attention scores; it cannot stop a label's attention leaking to pixels
outside its region, where the object is then drawn a second time, nor make a small region win
against the model's usual object size. Backward guidance (Chen, Laina & Vedaldi 2024, "Training-
Free Layout Control with Cross-Attention Guidance", section 3.3) does what the bias cannot: during
the first steps, the energy

    E = sum over regions r of (1 - sum_{pixels in r} A_r / sum_{all pixels} A_r)^2

(A_r: the cross-attention probabilities of r's label tokens, averaged over heads, at every
cross-attention layer; the layers' energies averaged) is differentiated with respect to the latent
x_t, and x_t moves down its gradient before the step's prediction. The Paint-with-Words bias and
the other score modifiers stay on in this pass, so the guidance corrects what PwW still misses.

The step is normalised: x_t <- x_t - strength * s_t * g / rms(g), with s_t the noise standard
deviation of x_t (sqrt(1 - abar_t) in the DDPM scaling the UNet sees) and rms over each image's
latent. The paper's raw step size eta depends on the checkpoint's gradient scale; a step measured
in noise standard deviations means the same on every model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .errors import RegionError
from .timing import StepClock

DEFAULT_GUIDANCE_WINDOW = 0.3  # the paper guides the first 10 of 50 steps; 0.3 of ours (tuned below)


class AttentionEnergy:
    """Observer plug-in of the guidance pass: E above, kept in the autograd graph.

    masks: per region, (H, W) in [0, 1] at the image's resolution; columns: per region, its label's
    token columns (the 77*k axis). Each observed cross-attention layer adds its energy; `value()`
    is their mean (a 0-d tensor with grad).
    """

    acts_on = "cond"

    def __init__(self, masks: Sequence[torch.Tensor], columns: Sequence[Sequence[int]]) -> None:
        self.masks = [m.float() for m in masks]
        self.columns = [list(c) for c in columns]
        self._layers: list[torch.Tensor] = []
        self._at_grid: dict[tuple[int, int, str], torch.Tensor] = {}

    def hooks(self, kind: str) -> tuple[bool, bool]:
        """(modifies scores, observes probs): observes cross-attention only."""
        return (False, kind == "cross")

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        """Observers leave the scores alone."""
        return scores

    def _masks(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(R, h*w): each region's area share of every layer pixel (area downsampling)."""
        key = (h, w, str(device))
        if key not in self._at_grid:
            stacked = torch.stack(self.masks)[:, None]  # (R, 1, H, W)
            small = F.adaptive_avg_pool2d(stacked, (h, w)).reshape(len(self.masks), h * w)
            self._at_grid[key] = small.to(device)
        return self._at_grid[key]

    def observe(self, probs: torch.Tensor, call: Any) -> None:
        """probs (n, heads, h*w, T) -> this layer's energy (a 0-d tensor, mean over the n rows)."""
        if call.grid is None:
            raise RegionError("attention guidance needs the layer's grid (UNetContext.at_grid)")
        mean = probs.float().mean(dim=1)  # (n, N, T)
        inside = self._masks(*call.grid, probs.device)  # (R, N)
        energy = probs.new_zeros((), dtype=torch.float32)
        for r, cols in enumerate(self.columns):
            attn = mean[:, :, cols].sum(-1)  # (n, N): the label's attention at each pixel
            share = (attn * inside[r]).sum(-1) / attn.sum(-1).clamp_min(1e-12)
            energy = energy + ((1 - share) ** 2).mean()
        self._layers.append(energy)

    def value(self) -> torch.Tensor:
        """The mean energy over the observed layers (0-d, with grad)."""
        if not self._layers:
            raise RegionError("attention guidance observed no cross-attention layer")
        return torch.stack(self._layers).mean()


Runner = Callable[[torch.Tensor, Sequence[Any]], None]


class RegionGuidance:
    """The guide a CFGEpsModel calls before each prediction (see `shift`).

    masks / columns: as AttentionEnergy. clock: the sampling's StepClock. strength: the step in
    noise standard deviations (0 = off); window: the fraction of the steps guided (the first
    ones, where the layout forms); iterations: gradient steps per guided step.
    """

    def __init__(self, masks: Sequence[torch.Tensor], columns: Sequence[Sequence[int]],
                 clock: StepClock, strength: float, window: float = DEFAULT_GUIDANCE_WINDOW,
                 iterations: int = 1) -> None:
        if strength <= 0 or not 0 < window <= 1 or iterations < 1:
            raise RegionError(f"attention guidance needs strength > 0, 0 < window <= 1 and "
                              f"iterations >= 1; got {strength}, {window}, {iterations}")
        if not masks or len(masks) != len(columns):
            raise RegionError("attention guidance needs one token column list per region mask")
        self.masks, self.columns = list(masks), [list(c) for c in columns]
        self.clock, self.strength = clock, strength
        self.window, self.iterations = window, iterations
        self.energies: list[float] = []  # the energy before each gradient step, for diagnostics

    def active(self) -> bool:
        """Whether the step now running is guided."""
        return self.clock.fraction() < self.window

    def shift(self, x_t: torch.Tensor, noise_std: torch.Tensor, run: Runner) -> torch.Tensor:
        """x_t (n, C, h, w) the UNet input; noise_std (n,) its s_t; run(x, plugins) runs the UNet's
        conditional pass on x with the extra plug-ins. Returns the moved x_t (no grad)."""
        x = x_t.detach()
        step = (self.strength * noise_std).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        for _ in range(self.iterations):
            energy = AttentionEnergy(self.masks, self.columns)
            with torch.enable_grad():
                leaf = x.clone().requires_grad_(True)
                run(leaf, [energy])
                value = energy.value()
                (grad,) = torch.autograd.grad(value, leaf)
            self.energies.append(float(value.detach()))
            rms = grad.pow(2).mean(dim=tuple(range(1, grad.dim())), keepdim=True).sqrt()
            x = x - step * grad / rms.clamp_min(1e-20)
        return x

    def __repr__(self) -> str:
        return (f"RegionGuidance({len(self.masks)} regions, strength={self.strength}, "
                f"window={self.window}, iterations={self.iterations})")
