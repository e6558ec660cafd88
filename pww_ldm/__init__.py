"""pww_ldm: Paint-with-Words for Stable Diffusion v1 on a standalone CompVis-style engine.

    model = pww_ldm.load_model("model.ckpt")
    images = pww_ldm.paint_with_words(model, prompt, color_map_image, color_context)

Importing changes nothing in the process. On Linux, a long CPU run is faster after
`pww_ldm.allocator.tune_malloc()` (the scripts call it first; see that module for why).
"""

from .approx import Approximations
from .inpaint import inpaint
from .loading import load_model
from .lora import apply_lora
from .models.embeddings import load_embeddings
from .pipeline import generate, img2img, paint_with_words, txt2img
from .region import RegionContext, load_color_context, parse_color_context
from .region.features import FeatureOptions
from .samplers.registry import sampler_names

__all__ = ["Approximations", "FeatureOptions", "RegionContext", "apply_lora", "generate", "img2img",
           "inpaint", "load_color_context", "load_embeddings", "load_model", "paint_with_words",
           "parse_color_context", "sampler_names", "txt2img"]
__version__ = "0.1.0"
