"""Exceptions for bad Paint-with-Words input: one type per kind, messages written for people.

All derive from `RegionError(ValueError)`, so callers that only know ValueError still catch them
and scripts can print the message and exit 2 without a traceback.
"""

from __future__ import annotations


class RegionError(ValueError):
    """Base of every Paint-with-Words input error."""


class ColorContextSyntaxError(RegionError):
    """A colour context (string, dict, list, JSON or YAML) that does not parse."""


class LabelNotInPromptError(RegionError):
    """A region's label is not a contiguous token span of the prompt (or lies past token 75)."""


class ColorNotInMapError(RegionError):
    """A colour named in the colour context has no pixel in the colour map."""


class ColorMapError(RegionError):
    """A colour map that cannot be used (missing, unreadable, wrong size for the output)."""


class WeightFunctionError(RegionError):
    """An unknown weight-function name or a misuse of its options."""
