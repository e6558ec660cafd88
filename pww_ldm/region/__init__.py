"""Paint-with-Words regions: colour-context parsing, token alignment, masks, weight functions,
per-region noise, and the RegionContext the cross-attention consumes."""

from .context import RegionContext
from .errors import (
    ColorContextSyntaxError,
    ColorMapError,
    ColorNotInMapError,
    LabelNotInPromptError,
    RegionError,
    WeightFunctionError,
)
from .masks import gaussian_blur, grid_level, resample_mask
from .noise import region_noise
from .parse import Region, load_color_context, parse_color, parse_color_context
from .tokens import label_positions
from .weighting import BUILTINS as WEIGHT_FUNCTIONS
from .weighting import get_weight_function

__all__ = [
    "ColorContextSyntaxError",
    "ColorMapError",
    "ColorNotInMapError",
    "LabelNotInPromptError",
    "Region",
    "RegionContext",
    "RegionError",
    "WEIGHT_FUNCTIONS",
    "WeightFunctionError",
    "gaussian_blur",
    "get_weight_function",
    "grid_level",
    "label_positions",
    "load_color_context",
    "parse_color",
    "parse_color_context",
    "region_noise",
    "resample_mask",
]
