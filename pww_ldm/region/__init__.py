"""Paint-with-Words regions as data and math: colour-context parsing, token alignment, masks,
weight functions, per-region noise, the RegionContext, and the attention plug-in that applies it.

Nothing here imports the network (`pww_ldm.models`): the plug-in meets the attention layers only
through the protocol in `pww_ldm.conditioning`."""

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
from .plugin import PaintWithWords
from .tokens import label_positions
from .weighting import BUILTINS as WEIGHT_FUNCTIONS
from .weighting import get_weight_function

__all__ = [
    "ColorContextSyntaxError",
    "ColorMapError",
    "ColorNotInMapError",
    "LabelNotInPromptError",
    "PaintWithWords",
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
