"""A job's inputs: open its files, fix its size, hash its parameters, check it without a model.

The same `open_inputs` serves validation (before any generation) and the workers (at run time),
so a job that passed validation reads exactly the bytes it was checked with, and its parameters
hash covers the contents of its files, not just their names.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..images import ImageSizeError, check_size
from ..lora import LoraError, extract_lora_tags
from ..masking import MaskError, prepare_mask
from ..pipeline import resolve_size
from ..region import (
    ColorMapError,
    LabelNotInPromptError,
    RegionContext,
    RegionError,
    WeightFunctionError,
    parse_color_context,
)
from ..user_errors import ImageFileError, read_image
from .features import TextSettings, feature_payload, job_loras
from .jobs import Issue, Job, JobFileError, parse_jobs

CACHE_SIZE = 32  # decoded images kept while validating (jobs often share a map)
HASH_VERSION = 1  # bump when the meaning of a field changes, so old outputs are redone


@dataclass
class JobInputs:
    """Decoded inputs of one job: images, parsed regions, resolved size, file digests."""

    color_map: Image.Image | None
    init_image: Image.Image | None
    regions: list  # list[Region]
    width: int
    height: int
    digests: dict[str, str | None]
    mask_image: Image.Image | None = None
    mask_digest: str | None = None


class InputFileError(OSError):
    """A colour map, init image or mask that cannot be read, decoded or used; `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _open_image(path: str | None, field: str,
                cache: dict | None) -> tuple[Image.Image | None, str | None]:
    """(image, sha256 of the file) with the pixels decoded now; a truncated file fails here."""
    if path is None:
        return None, None
    if cache is not None and path in cache:
        return cache[path]
    try:
        image, data = read_image(path, "file")
    except ImageFileError as exc:
        raise InputFileError(field, str(exc)) from None
    result = (image, hashlib.sha256(data).hexdigest())
    if cache is not None:
        if len(cache) >= CACHE_SIZE:  # bounded: a file of 100k jobs with their own maps
            cache.pop(next(iter(cache)))
        cache[path] = result
    return result


def open_inputs(job: Job, cache: dict | None = None) -> JobInputs:
    """Read and decode the job's colour map, init image, mask and colour context; resolve its size.

    Raises OSError (missing / unreadable image, a mask with nothing to repaint), RegionError (bad
    colour context) or ImageSizeError. `cache` (path -> decoded
    image) lets validation open a shared map once.
    """
    color_map, map_digest = _open_image(job.color_map, "color_map", cache)
    init, init_digest = _open_image(job.init_image, "init_image", cache)
    mask, mask_digest = _open_image(job.mask_image, "mask_image", cache)
    if mask is not None:
        try:
            prepare_mask(mask, mask.size, 0, job.invert_mask)  # empty (after invert_mask)?
        except MaskError as exc:
            raise InputFileError("mask_image", f"{job.mask_image}: {exc}") from None
    regions = parse_color_context(job.color_context)  # file path, inline text or data
    reference = color_map or init
    width, height = resolve_size(job.width or None, job.height or None, reference)
    check_size(width, height)
    return JobInputs(color_map, init, regions, width, height,
                     {"color_map": map_digest, "init_image": init_digest}, mask, mask_digest)


def _region_payload(region: Any) -> dict[str, Any]:
    out = {"color": list(region.color), "label": region.label, "weight": region.weight,
           "seed": region.seed, "blur": region.blur, "occurrence": region.occurrence}
    # fields added later count only when used, so jobs without them keep their hashes
    for name, unused in (("outside", 0.0), ("prompt", None), ("negative_prompt", None)):
        if getattr(region, name, unused) != unused:
            out[name] = getattr(region, name)
    return out


def job_hash(job: Job, inputs: JobInputs, model_id: str, text: TextSettings | None = None) -> str:
    """16 hex digits of sha256 over everything that decides the job's images.

    Covered: the model id, prompt, seed, sampler, steps, scales, size, strength (img2img), eta,
    weighting, the file contents of map, init image and mask, the parsed regions, and what
    `features.feature_payload` adds (LoRA file hashes and weights, the embeddings the prompts
    use, clip skip, mask and hires settings). Not covered: the job's id and output name
    (renaming a job does not redo it). text: the run's text flags (default: none given).
    """
    regions = [_region_payload(r) for r in inputs.regions]
    payload = {
        "v": HASH_VERSION, "model": model_id, "prompt": job.prompt,
        "negative_prompt": job.negative_prompt, "seed": job.seed, "sampler": job.sampler,
        "steps": job.steps, "guidance_scale": job.guidance_scale, "n_images": job.n_images,
        "width": inputs.width, "height": inputs.height, "eta": job.eta, "regions": regions,
        "weight_function": job.weight_function, "weight_scale": job.weight_scale,
        "resample": job.resample, "strict": job.strict, **inputs.digests,
        "strength": job.strength if job.init_image is not None else None,
        **feature_payload(job, text or TextSettings(), inputs.mask_digest),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _field_of(exc: Exception) -> str:
    if isinstance(exc, ColorMapError):
        return "color_map"
    if isinstance(exc, WeightFunctionError):
        return "weight_function"
    if isinstance(exc, ImageSizeError):
        return "width"
    return "color_context"


def validate_job_file(path: str | Path, check_inputs: bool = True,
                      text: TextSettings | None = None) -> list[Job]:
    """Parse the job file and (check_inputs) open every input and check every label and LoRA tag.

    text: the run's text flags (where `<lora:name>` tags are looked up, the embeddings' names).
    Raises JobFileError listing every problem of every job at once, by line.
    """
    jobs, issues = parse_jobs(path)
    if check_inputs:
        issues += check_job_inputs(jobs, text=text)
    if issues:
        raise JobFileError(str(path), sorted(issues, key=lambda i: i.line))
    return jobs


def check_job_inputs(jobs: list[Job], tokenizer: Any = None,
                     text: TextSettings | None = None) -> list[Issue]:
    """Open every job's files, find its LoRAs and align its labels with its prompt (bundled
    tokenizer, no model).

    Returns the problems found (empty = all good); colours missing from the map are problems
    unless the job says strict: false. A label holding an embedding's name is left to the
    pipeline (it tokenizes differently once the embedding is loaded), as the scripts do.
    """
    if tokenizer is None:
        from ..models.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    text = text or TextSettings()
    embeddings = set(text.embedding_names())
    issues: list[Issue] = []
    cache: dict = {}
    for job in jobs:
        issues += _job_issues(job, cache, tokenizer, text, embeddings)
    return issues


def _job_issues(job: Job, cache: dict, tokenizer: Any, text: TextSettings,
                embeddings: set[str]) -> list[Issue]:
    who = f"job {job.id!r}"

    def issue(name: str, reason: str) -> Issue:
        return Issue(job.field_lines.get(name, job.line), who, name, reason)

    try:
        job_loras(job, text)
    except LoraError as exc:
        return [issue("prompt", str(exc))]
    try:
        inputs = open_inputs(job, cache)
    except InputFileError as exc:
        return [issue(exc.field, str(exc).split(": ", 1)[1])]
    except (RegionError, ImageSizeError) as exc:
        return [issue(_field_of(exc), str(exc))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            RegionContext.build(extract_lora_tags(job.prompt)[0], inputs.color_map, inputs.regions,
                                width=inputs.width, height=inputs.height, tokenizer=tokenizer,
                                weight_function=job.weight_function,
                                weight_scale=job.weight_scale, resample=job.resample,
                                strict=job.strict)
    except LabelNotInPromptError as exc:
        if not any(name in job.prompt for name in embeddings):
            return [issue("color_context", str(exc))]
    except RegionError as exc:
        return [issue(_field_of(exc), str(exc))]
    return []
