"""Weight functions: the bias f(w, sigma, qk) added to cross-attention scores (eDiffi's PwW).

Built-ins (the reference paint-with-words-sd's, with `scale` the leading constant):
    max:      scale * w * log(1 + sigma)    * max(qk)   scale 0.1 (the default function)
    std:      scale * w * log(1 + sigma)    * std(qk)   scale 1.0
    log2_std: scale * w * log(1 + sigma^2)  * std(qk)   scale 1.0
Statistics are per sample (over that sample's heads, pixels and tokens), so a batch gives the same
bias as single-image calls. Built-ins are vectorised over the batch: w (n, 1, N, T), sigma (n,),
qk (n, heads, N, T) -> bias broadcastable to (n, heads, N, T). A user callable keeps the reference
per-sample signature (w (N, T), sigma 0-d, qk (heads, N, T)) and is looped over samples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .errors import WeightFunctionError

_DIMS = (1, 2, 3)  # heads, pixels, tokens of one sample


def _per_sample_sigma(sigma: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
    """sigma as (n, 1, 1, 1) in qk's dtype/device, accepting a scalar or (n,) tensor."""
    sigma = torch.as_tensor(sigma, dtype=qk.dtype, device=qk.device).reshape(-1)
    return sigma.expand(qk.shape[0]).view(-1, 1, 1, 1)


def weight_max(
    w: torch.Tensor, sigma: torch.Tensor, qk: torch.Tensor, scale: float = 0.1
) -> torch.Tensor:
    """scale * w * log(1 + sigma) * max(qk); (n,1,N,T), (n,), (n,h,N,T) -> (n,h|1,N,T)."""
    s = _per_sample_sigma(sigma, qk)
    return scale * w * torch.log1p(s) * qk.amax(dim=_DIMS, keepdim=True)


def weight_std(
    w: torch.Tensor, sigma: torch.Tensor, qk: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """scale * w * log(1 + sigma) * std(qk) (unbiased, as torch.std); shapes as weight_max."""
    s = _per_sample_sigma(sigma, qk)
    return scale * w * torch.log1p(s) * qk.std(dim=_DIMS, keepdim=True)


def weight_log2_std(
    w: torch.Tensor, sigma: torch.Tensor, qk: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """scale * w * log(1 + sigma^2) * std(qk); shapes as weight_max."""
    s = _per_sample_sigma(sigma, qk)
    return scale * w * torch.log1p(s * s) * qk.std(dim=_DIMS, keepdim=True)


BUILTINS: dict[str, Callable[..., torch.Tensor]] = {
    "max": weight_max,
    "std": weight_std,
    "log2_std": weight_log2_std,
}

WeightFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Functions taking batched shapes carry `batched = True`; any other callable is per-sample.
for _fn in BUILTINS.values():
    _fn.batched = True  # type: ignore[attr-defined]


class PerSample:
    """A user weight function f(w (N,T), sigma 0-d, qk (heads,N,T)) applied sample by sample.

    Called with batched shapes w (n|1, 1, N, T), sigma (n,), qk (n, heads, N, T), it returns
    (n, heads, N, T): each sample's result broadcast to its qk's shape and stacked.
    """

    batched = True

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, w: torch.Tensor, sigma: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
        n = qk.shape[0]
        sigma = torch.as_tensor(sigma, dtype=qk.dtype, device=qk.device).reshape(-1).expand(n)
        w = w.expand(n, *w.shape[1:])
        out = []
        for i in range(n):
            bias = torch.as_tensor(self.fn(w[i, 0], sigma[i], qk[i]), dtype=qk.dtype)
            out.append(bias.to(qk.device).expand_as(qk[i]))
        return torch.stack(out)

    def __repr__(self) -> str:
        return f"PerSample({self.fn!r})"


def get_weight_function(
    name_or_callable: str | Callable = "max", scale: float | None = None
) -> WeightFunction:
    """A batched weight function (w (n,1,N,T), sigma (n,), qk (n,heads,N,T)) -> bias.

    A name picks a built-in ("max", "std", "log2_std"), `scale` replacing its leading constant;
    a callable is taken as a per-sample reference-style function and wrapped in `PerSample`.
    """
    if callable(name_or_callable):
        if getattr(name_or_callable, "batched", False):
            if scale is not None:
                raise WeightFunctionError("pass `scale` with a built-in's name, not a function")
            return name_or_callable  # a built-in, or the result of an earlier call
        if scale is not None:
            raise WeightFunctionError("`scale` applies to built-in weight functions only")
        return PerSample(name_or_callable)
    fn = BUILTINS.get(str(name_or_callable))
    if fn is None:
        raise WeightFunctionError(
            f"unknown weight function {name_or_callable!r}; valid: {sorted(BUILTINS)} "
            "or a callable f(w, sigma, qk)"
        )
    if scale is None:
        return fn
    scaled = functools.partial(fn, scale=float(scale))
    scaled.batched = True  # type: ignore[attr-defined]
    return scaled
