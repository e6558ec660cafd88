"""Errors for bad sampler input: one type per kind, messages written for people.

All are `ValueError` subclasses so callers that only know "bad input" can catch `ValueError`;
scripts catch `SamplerInputError` and print the message without a traceback.
"""

from __future__ import annotations


class SamplerInputError(ValueError):
    """Base class of the sampling layer's bad-input errors."""


class UnknownSamplerError(SamplerInputError):
    """A sampler name that is not in the registry; the message lists the valid names."""


class InvalidStepsError(SamplerInputError):
    """A step count that is not an integer >= 1 (or too large for the timestep schedule)."""


class InvalidStrengthError(SamplerInputError):
    """An img2img strength outside (0, 1], or strength and init latent not given together."""


class InvalidSamplerArgumentError(SamplerInputError):
    """Any other bad argument: shapes that do not match, bad seeds, eta for PLMS, ..."""
