"""Classifier-free guidance around the UNet, and the k-diffusion denoiser D(x, sigma) on top.

`CFGEpsModel` is the only place that calls the UNet: one call on the concatenated
[uncond; cond] batch (Ho & Salimans 2021, "Classifier-Free Diffusion Guidance"), with the
current sigma, the attention plug-ins and which rows are conditional handed to the UNet in a
`UNetContext`. The k-samplers use it through `KDenoiser` (sigma space, Karras et al. 2022); DDIM
and PLMS call it directly in timestep space. So guidance and the plug-in seam live in one place
for every sampler.

A v-prediction model (Salimans & Ho 2022, "Progressive Distillation", v = alpha eps - s x_0 with
x_t = alpha x_0 + s eps, alpha^2 + s^2 = 1) is turned into eps here too, eps = alpha v + s x_t
with alpha = 1/sqrt(1 + sigma^2), s = sigma alpha: every sampler family then sees an eps model.
The map is affine with the same coefficients for both CFG halves, so guiding v and converting,
or converting and guiding eps (or x_0, as k-diffusion's CompVisVDenoiser does), agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..approx import Approximations, start_run
from ..conditioning import ATTENTION_KINDS, AttentionPlugin, UNetContext
from .errors import InvalidSamplerArgumentError
from .schedules import DiscreteSchedule


def model_dtype(model: Any) -> torch.dtype | None:
    """Floating dtype of the model's first parameter (fp16/bf16/fp32), or None if it has none."""
    params = getattr(model, "parameters", None)
    if params is None:
        return None
    p = next(iter(params()), None)
    return p.dtype if p is not None and p.is_floating_point() else None


def _rows(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    # One embedding row may serve a whole batch (the same prompt for every seed).
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    raise InvalidSamplerArgumentError(
        f"{what} has {t.shape[0]} rows for a batch of {n} images: give 1 or {n} rows"
    )


class CFGEpsModel:
    """eps(x_in, t, sigma) of a CompVis-style model with batched classifier-free guidance.

    model: has `apply_model(x (B,4,h,w), t (B,), cond) -> eps (B,4,h,w)`.
    Call: x_in (n,4,h,w) the UNet input (already scaled: x_t in DDPM terms), t (n,) float
    timesteps, sigma (n,) the k-diffusion noise level of this call (for the attention plug-ins),
    cond (n or 1, T, C), uncond (n or 1, T, C) or None, plugins: attention plug-ins for the UNet.
    c_concat (n or 1, C', h, w): an inpainting model's extra input channels (mask + masked-image
    latent), the same for both CFG halves. keep_latent (n, 4, h, w) with keep_mask (n or 1, 1, h, w)
    in [0, 1]: inpainting with any model, see `keep_known`. Returns eps (n,4,h,w) in x_in's dtype:
    eps_u + guidance_scale * (eps_c - eps_u); a v model's output is converted (module doc).

    With guidance_scale == 1 or uncond None only the cond half runs (half the UNet work).
    The UNet input is cast to the model's parameter dtype (fp16/bf16 on CUDA) and eps back.
    approx (constructor): the optional approximations of the guided UNet calls
    (pww_ldm.approx.Approximations; None = exact), their state living as long as this object.
    guide: latent guidance (pww_ldm.region.guidance.RegionGuidance: `active()`, `shift(x_t,
    noise_std, run)`): when active it moves x_t to x_t' by gradients of a conditional pass, the
    prediction is made at x_t', and eps is returned as eps(x_t') + (x_t - x_t') / s_t, so that every
    sampler family's x_0 estimate (x_t - s_t eps) / alpha_t is the one of the moved latent.
    """

    def __init__(self, model: Any, approx: Approximations | None = None) -> None:
        self.model = model
        self.dtype = model_dtype(model)
        self.v_prediction = getattr(model, "parameterization", "eps") == "v"
        # one sampling run per CFGEpsModel: its approximations' state (DeepCache's kept feature,
        # ToMe's generator) starts fresh here and never outlives the run
        self.approx_run = start_run(approx)

    def __call__(
        self,
        x_in: torch.Tensor,
        t: torch.Tensor,
        sigma: torch.Tensor,
        *,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        plugins: Sequence[AttentionPlugin] = (),
        c_concat: torch.Tensor | None = None,
        keep_latent: torch.Tensor | None = None,
        keep_mask: torch.Tensor | None = None,
        guide: Any = None,
    ) -> torch.Tensor:
        n = x_in.shape[0]
        cond = _rows(cond, n, "cond")
        if c_concat is not None:
            c_concat = _rows(c_concat, n, "c_concat")
        moved = x_in
        if guide is not None and guide.active():
            moved = self._guided(guide, x_in, t, sigma, cond, plugins, c_concat)
        eps = self._eps(moved, t, sigma, cond, uncond, guidance_scale, plugins, c_concat)
        if keep_latent is not None:
            eps = keep_known(eps, moved, sigma, keep_latent, keep_mask)
        if moved is not x_in:
            eps = eps + (x_in - moved) / _noise_std(sigma, eps)
        return eps

    def _guided(self, guide: Any, x_t: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor,
                cond: torch.Tensor, plugins: Sequence[AttentionPlugin],
                c_concat: torch.Tensor | None) -> torch.Tensor:
        """x_t moved by the guide, from conditional passes with the score modifiers (observers
        such as attention maps are left out: they record the sampling, not the guidance)."""
        modifiers = tuple(p for p in plugins if any(p.hooks(kind)[0] for kind in ATTENTION_KINDS))
        extra = {} if c_concat is None else {"c_concat": c_concat}
        cast = self.dtype or x_t.dtype

        def run(x: torch.Tensor, observers: Sequence[Any]) -> None:
            context = UNetContext(embeddings=cond.to(cast), sigma=sigma,
                                  plugins=(*modifiers, *observers), cond_rows=slice(0, x.shape[0]))
            self.model.apply_model(x.to(cast), t, context, **extra)

        return guide.shift(x_t, _noise_std(sigma, x_t), run).to(x_t.dtype)

    def _eps(self, x_in: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
             uncond: torch.Tensor | None, guidance_scale: float,
             plugins: Sequence[AttentionPlugin], c_concat: torch.Tensor | None) -> torch.Tensor:
        """The classifier-free-guided eps (or v converted to eps) at x_in."""
        n, state_dtype, x_t = x_in.shape[0], x_in.dtype, x_in
        guided = uncond is not None and guidance_scale != 1.0
        if guided:
            uncond = _rows(uncond, n, "uncond")
            x_in, t, sigma = torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([sigma, sigma])
            c_concat = None if c_concat is None else torch.cat([c_concat, c_concat])
            embeddings = torch.cat([uncond, cond])
            cond_rows = slice(n, 2 * n)
        else:
            embeddings = cond
            cond_rows = slice(0, n)
        if self.dtype is not None:
            x_in, embeddings = x_in.to(self.dtype), embeddings.to(self.dtype)
        context = UNetContext(embeddings=embeddings, sigma=sigma, plugins=tuple(plugins),
                              cond_rows=cond_rows, approx=self.approx_run)
        extra = {} if c_concat is None else {"c_concat": c_concat}
        out = self.model.apply_model(x_in, t, context, **extra).to(state_dtype)
        if guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        return v_to_eps(out, x_t, sigma[:n]) if self.v_prediction else out


def _noise_std(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """s_t = sigma / sqrt(1 + sigma^2) (n,), the noise std of the DDPM-scaled x_t, as (n,1,1,1)."""
    s = sigma / (1 + sigma**2).sqrt()
    return s.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = alpha v + s x_t, alpha = 1/sqrt(1 + sigma^2), s = sigma alpha (module doc).

    v, x_t (n, C, h, w) with x_t the UNet's input (DDPM-scaled); sigma (n,). Computed in
    float32 (float64 stays), returned in v's dtype.
    """
    compute = torch.promote_types(v.dtype, torch.float32)
    s = sigma.to(compute).view(-1, *([1] * (v.ndim - 1)))
    alpha = (1 + s**2).rsqrt()
    return (alpha * v.to(compute) + s * alpha * x_t.to(compute)).to(v.dtype)


class KDenoiser(nn.Module):
    """k-diffusion denoiser D(x, sigma) of an eps-prediction model (`DiscreteEpsDDPMDenoiser`).

    D(x, sigma) = x + c_out * eps(c_in * x, t(sigma), sigma), c_in = 1/sqrt(sigma^2 + 1),
    c_out = -sigma (Karras et al. 2022, Table 1, "VP" column in sigma parametrisation).
    x (n,4,h,w) in sigma space (x_sigma = x_0 + sigma * noise), sigma (n,); keyword arguments
    (cond, uncond, guidance_scale, plugins) go to the eps model. Returns x_0 estimate (n,4,h,w).
    """

    def __init__(self, eps_model: CFGEpsModel, schedule: DiscreteSchedule) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.schedule = schedule
        self.sigma_data = 1.0

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_out, c_in), each shaped like sigma."""
        c_out = -sigma
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_out, c_in

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """(n,4,h,w), (n,) -> denoised (n,4,h,w)."""
        c_out, c_in = (c.view(-1, *([1] * (x.ndim - 1))) for c in self.get_scalings(sigma))
        t = self.schedule.sigma_to_t(sigma).to(sigma.dtype)
        eps = self.eps_model(x * c_in, t, sigma, **kwargs)
        return x + eps * c_out


def keep_known(eps: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, keep_latent: torch.Tensor,
               keep_mask: torch.Tensor) -> torch.Tensor:
    """A1111's inpainting blend, in eps terms: the x_0 prediction is replaced by `keep_latent`
    where keep_mask is 1 (A1111's `denoised = init_latent * mask + nmask * denoised`).

    x_0 = (x_t - s eps) / alpha, blended, then eps' = (x_t - alpha x_0') / s; every sampler family
    steps with the blended x_0. eps, x_t, keep_latent (n, C, h, w); sigma (n,) > 0; keep_mask
    (n or 1, 1, h, w). Returns eps' in eps's dtype.
    """
    compute = torch.promote_types(eps.dtype, torch.float32)
    sig = sigma.to(compute).view(-1, *([1] * (eps.ndim - 1)))
    alpha = (1 + sig**2).rsqrt()
    xt, m = x_t.to(compute), keep_mask.to(compute)
    x0 = (xt - sig * alpha * eps.to(compute)) / alpha
    x0 = keep_latent.to(compute) * m + x0 * (1 - m)
    return ((xt - alpha * x0) / (sig * alpha)).to(eps.dtype)
