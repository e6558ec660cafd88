"""The fields of a batch job: each one's check (type, range, names) and default.

Names and defaults are those of `pww_ldm.paint_with_words`, `pww_ldm.inpaint` (mask_*,
invert_mask, only_masked*), `pww_ldm.hires.hires_fix` (hr_*), the model's `clip_skip` and the region features
(`self_attention`, `dense_cross`, `attention_guidance`, `base_ratio`, `region_cover`,
`region_bias_tokens`: the scripts' flags), the approximations (`tome`, `deepcache`, `deepcache_branch`), plus
`id` and `output` (the output name, without .png, relative to the output folder). A check returns
the value to use (sampler names become canonical snake_case) or raises `Bad` with a reason
written for people. Checks that involve several fields are in jobs.py (`_combination_issues`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from ..hires import UPSCALERS
from ..samplers.errors import SamplerInputError
from ..samplers.registry import get_sampler

REQUIRED = object()


class Bad(ValueError):
    """A field value that fails its check; the message says why."""


def _int(minimum: int, optional: bool = False) -> Callable[[Any], int | None]:
    def check(v: Any) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise Bad(f"must be an integer >= {minimum}{' or null' if optional else ''}, got {v!r}")
        return v
    return check


def _number(minimum: float | None = None, optional: bool = False) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Bad(f"must be a finite number{' or null' if optional else ''}, got {v!r}")
        if minimum is not None and v < minimum:
            raise Bad(f"must be >= {minimum}, got {v!r}")
        return float(v)
    return check


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise Bad(f"must be a string, got {v!r}")
    return v


def _nonempty(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise Bad(f"must be a non-empty string, got {v!r}")
    return v


def _seed(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise Bad(f"must be an integer >= 0 (a fixed seed: resume and determinism depend on it), "
                   f"got {v!r}")
    return v


def _size(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 8:
        raise Bad(f"must be a positive multiple of 8 px (or null = from the map), got {v!r}")
    return v


def _sampler(v: Any) -> str:
    try:
        return get_sampler(v).name
    except SamplerInputError as exc:
        raise Bad(str(exc)) from None


def _weight_function(v: Any) -> str:
    from ..region import WEIGHT_FUNCTIONS

    if v not in WEIGHT_FUNCTIONS:
        raise Bad(f"unknown weight function {v!r}; valid: {', '.join(WEIGHT_FUNCTIONS)}")
    return v


def _unit(optional: bool = False) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        value = _number(optional=optional)(v)
        if value is not None and not 0 < value <= 1:
            raise Bad(f"must be in (0, 1], got {v!r}")
        return value
    return check


def _region_cover(v: Any) -> str:
    from ..region.region_prompts import COVERS

    if v not in COVERS:
        raise Bad(f"must be one of {', '.join(COVERS)}, got {v!r}")
    return v


def _region_bias_tokens(v: Any) -> str:
    from ..region.region_prompts import BIAS_TOKENS

    if v not in BIAS_TOKENS:
        raise Bad(f"must be one of {', '.join(BIAS_TOKENS)}, got {v!r}")
    return v


def _unit_closed(v: Any) -> float:
    value = _number()(v)
    if not 0 <= value <= 1:
        raise Bad(f"must be in [0, 1], got {v!r}")
    return value


def _merge_ratio(v: Any) -> float:
    value = _number()(v)
    if not 0 <= value < 1:
        raise Bad(f"must be in [0, 1) (the fraction of tokens ToMe merges; 0 = off), got {v!r}")
    return value


def _hr_scale(v: Any) -> float | None:
    value = _number(optional=True)(v)
    if value is not None and not value > 1:
        raise Bad(f"must be above 1 (the hires pass is hr_scale times the size) or null = no "
                  f"hires fix, got {v!r}")
    return value


def _choice(*values: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in values:
            raise Bad(f"must be one of {list(values)}, got {v!r}")
        return v
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Bad(f"must be true or false, got {v!r}")
    return v


def _path(v: Any) -> str | None:
    if v is None:
        return None
    return _nonempty(v)


def _context(v: Any) -> Any:
    if v is None or isinstance(v, (str, dict, list)):
        return v
    raise Bad(f"must be a file path, an inline JSON/YAML string, a mapping or a list, got {v!r}")


def _output(v: Any) -> str:
    name = _nonempty(v)
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name or name.endswith(".png"):
        raise Bad(f"must be a relative name inside the output folder, without '..' or '.png', "
                   f"got {v!r}")
    return name


# field -> (check, default). Names are those of paint_with_words.
FIELDS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "id": (_nonempty, None), "output": (_output, None), "prompt": (_text, REQUIRED),
    "seed": (_seed, REQUIRED), "negative_prompt": (_text, ""), "color_map": (_path, None),
    "color_context": (_context, None), "sampler": (_sampler, "euler_a"), "steps": (_int(1), 30),
    "guidance_scale": (_number(), 7.5), "weight_function": (_weight_function, "max"),
    "weight_scale": (_number(optional=True), None), "width": (_size, None),
    "height": (_size, None), "n_images": (_int(1), 1), "init_image": (_path, None),
    "strength": (_unit(optional=True), None), "eta": (_number(0.0, optional=True), None),
    "resample": (_choice("area", "bilinear"), "area"), "strict": (_bool, True),
    # inpainting (pww_ldm.inpaint); used only with mask_image
    "mask_image": (_path, None), "mask_blur": (_number(0.0), 4.0), "invert_mask": (_bool, False),
    "only_masked": (_bool, False), "only_masked_padding": (_int(0), 32),
    # hires fix (pww_ldm.hires.hires_fix); used only with hr_scale
    "hr_scale": (_hr_scale, None), "hr_denoise": (_unit(), 0.5),
    "hr_upscaler": (_choice(*UPSCALERS), "latent"), "hr_steps": (_int(1, optional=True), None),
    # text encoder: None = the run's --clip-skip, else the model's own
    "clip_skip": (_int(1, optional=True), None),
    # region features (pww_ldm.region.features.FeatureOptions; the scripts' flags); 0 = off
    "self_attention": (_number(0.0), 0.0), "dense_cross": (_number(0.0), 0.0),
    "attention_guidance": (_number(0.0), 0.0), "base_ratio": (_unit_closed, 1.0),
    "region_cover": (_region_cover, "touch"),  # region_prompts.DEFAULT_COVER
    "region_bias_tokens": (_region_bias_tokens, "end"),  # region_prompts.DEFAULT_BIAS_TOKENS
    # the UNet's optional approximations (pww_ldm.approx.Approximations; --tome, --deepcache)
    "tome": (_merge_ratio, 0.0), "deepcache": (_int(0), 0), "deepcache_branch": (_int(0), 1),
}
# strength left out (null): the library's default, 0.5 for img2img and 0.75 for inpainting
STRENGTH_DEFAULTS = {"img2img": 0.5, "inpaint": 0.75}
PER_JOB_ONLY = ("id", "output")


def unknown_field(name: str) -> str:
    """The reason for an unknown field name, with the closest valid one."""
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{hint}; valid fields: {', '.join(FIELDS)}"
