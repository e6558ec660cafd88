"""Weight functions against the reference formulas, with per-sample statistics."""

import math

import pytest
import torch

from pww_ldm.region import WEIGHT_FUNCTIONS, WeightFunctionError, get_weight_function

# The reference (paint-with-words-sd) lambdas, applied to one sample: w (N, T), sigma, qk (H, N, T).
REFERENCE = {
    "max": lambda w, sigma, qk, c=0.1: c * w * math.log(1 + sigma) * qk.max(),
    "std": lambda w, sigma, qk, c=1.0: c * w * math.log(1 + sigma) * qk.std(),
    "log2_std": lambda w, sigma, qk, c=1.0: c * w * math.log(1 + sigma**2) * qk.std(),
}


def batch(n=2, heads=3, pixels=16, tokens=77):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, 1, pixels, tokens, generator=g)
    qk = (
        torch.randn(n, heads, pixels, tokens, generator=g)
        * torch.tensor([1.0, 5.0])[:n, None, None, None]
    )
    sigma = torch.tensor([0.5, 14.6])[:n]
    return w, sigma, qk


@pytest.mark.parametrize("name", ["max", "std", "log2_std"])
@pytest.mark.parametrize("scale", [None, 2.5])
def test_builtins_match_reference_per_sample(name, scale) -> None:
    w, sigma, qk = batch()
    fn = get_weight_function(name, scale)
    out = fn(w, sigma, qk)
    assert out.shape == (2, 1, 16, 77)
    for i in range(2):
        kwargs = {} if scale is None else {"c": scale}
        ref = REFERENCE[name](w[i, 0], float(sigma[i]), qk[i], **kwargs)
        assert torch.allclose(out[i, 0], ref, rtol=1e-5, atol=1e-6)
        # A batch of 2 equals 2 single calls (statistics over one sample only).
        single = fn(w[i : i + 1], sigma[i : i + 1], qk[i : i + 1])
        assert torch.allclose(out[i : i + 1], single, rtol=1e-6, atol=1e-7)


def test_default_is_max_and_weights_broadcast() -> None:
    assert get_weight_function() is WEIGHT_FUNCTIONS["max"]
    w, sigma, qk = batch()
    out = get_weight_function("max")(w[:1], sigma, qk)  # one weight map for both samples
    assert out.shape == (2, 1, 16, 77)
    assert torch.allclose(out[1], 0.1 * w[0] * math.log1p(14.6) * qk[1].max(), rtol=1e-5)


def test_user_callable_is_looped_per_sample() -> None:
    seen = []

    def fn(w, sigma, qk):
        seen.append((tuple(w.shape), tuple(sigma.shape), tuple(qk.shape)))
        return 0.3 * w * math.log(sigma + 1) * qk.max()  # reference-style: math.log on a 0-d tensor

    w, sigma, qk = batch()
    out = get_weight_function(fn)(w, sigma, qk)
    assert seen == [((16, 77), (), (3, 16, 77))] * 2
    assert out.shape == qk.shape
    expected = get_weight_function("max", 0.3)(w, sigma, qk)
    assert torch.allclose(out, expected.expand_as(qk), rtol=1e-5, atol=1e-6)
    # A constant (the reference's uncond lambda returns 0.0) broadcasts too.
    assert torch.equal(get_weight_function(lambda w, s, q: 0.0)(w, sigma, qk), torch.zeros_like(qk))


def test_errors() -> None:
    with pytest.raises(
        WeightFunctionError, match=r"unknown weight function 'mean'.*\['log2_std', 'max', 'std'\]"
    ):
        get_weight_function("mean")
    with pytest.raises(WeightFunctionError, match="scale"):
        get_weight_function(lambda w, s, q: w, scale=2.0)
    scaled = get_weight_function("std", 2.0)
    assert get_weight_function(scaled) is scaled  # already batched: passed through
