"""The scripts' features in a batch: the run's text flags, LoRA tags, inpainting, hires fix, clip skip.

`TextSettings` carries scripts/batch_pww.py's --lora / --lora-dir / --embeddings-dir / --clip-skip
(checked by pww_ldm.cli_text, the txt2img script's own checks) to every process; `feature_payload`
is what those and a job's mask, hires and clip-skip fields add to the job hash (only what a job
uses, so jobs without them keep the hashes they had); `generate_job` calls the library function
the job asks for, as the scripts do.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from ..approx import Approximations
from ..cli_text import check_text, embeddings_dir, prepare_text
from ..lora import DEFAULT_LORA_DIR, extract_lora_tags, lora_shorthash, parse_lora_arg, resolve_lora
from ..models.embeddings import embedding_files
from ..region.features import FeatureOptions
from ..region.region_prompts import DEFAULT_BIAS_TOKENS, DEFAULT_COVER
from ..user_errors import UsageError
from .jobs import Job

# job fields of the region features and their "off" values
FEATURE_FIELDS = {"self_attention": 0.0, "dense_cross": 0.0, "attention_guidance": 0.0, "base_ratio": 1.0,
                  "region_cover": DEFAULT_COVER, "region_bias_tokens": DEFAULT_BIAS_TOKENS}
# job fields of the approximations and their exact values (hashed when a job sets one away)
APPROX_FIELDS = {"tome": 0.0, "deepcache": 0, "deepcache_branch": 1}


@dataclass(frozen=True)
class TextSettings:
    """The run's text flags as every process needs them (picklable, for spawn strategies).

    lora_dir: where `<lora:name>` tags are looked up. fixed_loras: (file, weight) merged for every
    job (`--lora`). embeddings: the textual-inversion folder or file loaded (None = none).
    clip_skip: the default of jobs that give none (None = the model's own).
    """

    lora_dir: str = str(DEFAULT_LORA_DIR)
    fixed_loras: tuple[tuple[str, float], ...] = ()
    embeddings: str | None = None
    clip_skip: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TextSettings:
        """From parsed text flags (cli_text.add_text_flags), checked without a model: UsageError
        for a missing --lora file or --embeddings-dir folder."""
        check_text(argparse.Namespace(**{**vars(args), "prompt": ""}))  # job prompts: see inputs.py
        folder = embeddings_dir(args)
        fixed = tuple((str(path), weight) for path, weight in map(parse_lora_arg, args.lora))
        return cls(str(args.lora_dir), fixed, None if folder is None else str(folder), args.clip_skip)

    def namespace(self) -> argparse.Namespace:
        """The flags again, as `cli_text.prepare_text` takes them."""
        return argparse.Namespace(clip_skip=self.clip_skip, embeddings_dir=self.embeddings,
                                  lora=[f"{path}:{weight}" for path, weight in self.fixed_loras],
                                  lora_dir=self.lora_dir)

    def embedding_names(self) -> dict[str, Path]:
        """{name: file} of the embeddings the run loads (a later file of a name wins, as loading)."""
        return {} if self.embeddings is None else dict(_embedding_names(self.embeddings))


@lru_cache(maxsize=8)  # listed once per process, not once per job
def _embedding_names(folder: str) -> tuple[tuple[str, Path], ...]:
    return tuple({path.stem: path for path in embedding_files(folder)}.items())


def job_loras(job: Job, text: TextSettings) -> list[tuple[str, Path, float]]:
    """[(name, file, weight)] the job merges: the run's --lora files, then its prompt's tags.

    Raises LoraFormatError (a malformed tag) or LoraNotFoundError (a name not in lora_dir).
    """
    tags = extract_lora_tags(job.prompt)[1]
    fixed = [(Path(path).stem, Path(path), weight) for path, weight in text.fixed_loras]
    return fixed + [(name, resolve_lora(name, text.lora_dir), weight) for name, weight in tags]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def feature_payload(job: Job, text: TextSettings, mask_digest: str | None) -> dict[str, Any]:
    """The job-hash entries of the features a job uses (absent when unused).

    loras: [name, A1111 shorthash of the tensor data, weight]; embeddings: sha256 of each file
    whose name the prompt or negative prompt holds; clip_skip: the job's or the run's; mask and
    hires: their fields; features: the region features the job turns on (none: no entry).
    """
    payload: dict[str, Any] = {}
    loras = job_loras(job, text)
    if loras:
        payload["loras"] = [[name, lora_shorthash(path), weight] for name, path, weight in loras]
    words = job.prompt + "\n" + job.negative_prompt
    used = {name: _file_digest(path) for name, path in text.embedding_names().items() if name in words}
    if used:
        payload["embeddings"] = used
    clip_skip = job.clip_skip if job.clip_skip is not None else text.clip_skip
    if clip_skip is not None:
        payload["clip_skip"] = clip_skip
    if job.mask_image is not None:
        payload["mask"] = {"digest": mask_digest, "blur": job.mask_blur, "invert": job.invert_mask,
                           "only_masked": job.only_masked,
                           "padding": job.only_masked_padding if job.only_masked else None}
    if job.hr_scale is not None:
        payload["hires"] = {"scale": job.hr_scale, "denoise": job.hr_denoise,
                            "upscaler": job.hr_upscaler, "steps": job.hr_steps}
    features = {k: getattr(job, k) for k, off in FEATURE_FIELDS.items() if getattr(job, k) != off}
    if features:
        payload["features"] = features
    approx = job_approximations(job)
    if approx is not None:  # the branch only matters with caching on
        payload["approx"] = {k: getattr(job, k) for k in APPROX_FIELDS
                             if k != "deepcache_branch" or approx.deepcache > 1}
    return payload


def job_approximations(job: Job) -> Approximations | None:
    """The job's ToMe / DeepCache settings, None when it runs the exact UNet."""
    approx = Approximations(tome=job.tome, deepcache=job.deepcache,
                            deepcache_branch=job.deepcache_branch)
    return approx if approx.active else None


def generate_job(model: Any, job: Job, inputs: Any, digest: str) -> list[Image.Image]:
    """The job's images: inpaint (mask_image), hires_fix (hr_scale) or paint_with_words (else),
    with the job's clip skip. `inputs` is the job's opened JobInputs."""
    from ..hires import hires_fix
    from ..inpaint import inpaint
    from ..pipeline import paint_with_words

    common: dict[str, Any] = dict(
        steps=job.steps, guidance_scale=job.guidance_scale, seed=job.seed, sampler=job.sampler,
        negative_prompt=job.negative_prompt, width=inputs.width, height=inputs.height,
        n_images=job.n_images, eta=job.eta, progress=False, extra_parameters={"Job hash": digest},
        approx=job_approximations(job))
    pww = dict(color_map_image=inputs.color_map, color_context=inputs.regions,
               weight_function=job.weight_function, weight_scale=job.weight_scale,
               resample=job.resample, strict=job.strict,
               features=FeatureOptions(self_attention=job.self_attention, dense_cross=job.dense_cross,
                                       guidance=job.attention_guidance, base_ratio=job.base_ratio,
                                       region_cover=job.region_cover,
                                       region_bias_tokens=job.region_bias_tokens))
    with job_clip_skip(model, job.clip_skip):
        if job.mask_image is None and job.hr_scale is None:
            return paint_with_words(model, job.prompt, init_image=inputs.init_image,
                                    strength=job.strength, **pww, **common)
        if inputs.color_map is not None:  # plain SD takes no PwW keywords
            common.update(pww)
        if job.mask_image is not None:
            return inpaint(model, job.prompt, inputs.init_image, inputs.mask_image,
                           mask_blur=job.mask_blur, invert_mask=job.invert_mask,
                           only_masked=job.only_masked, only_masked_padding=job.only_masked_padding,
                           strength=job.strength, **common)
        return hires_fix(model, job.prompt, hr_scale=job.hr_scale, hr_denoise=job.hr_denoise,
                         hr_upscaler=job.hr_upscaler, hr_steps=job.hr_steps, **common)


@contextmanager
def job_clip_skip(model: Any, clip_skip: int | None) -> Iterator[None]:
    """`model.clip_skip` set to `clip_skip` inside (None: left as the run set it), then restored."""
    if clip_skip is None:
        yield
        return
    before = model.clip_skip
    model.clip_skip = clip_skip  # ValueError beyond the text encoder's layers
    try:
        yield
    finally:
        model.clip_skip = before


def prepare_model(model: Any, text: TextSettings, jobs: list[Job]) -> None:
    """The run's text flags on the loaded model (as the scripts), then every job's clip skip
    checked against its text encoder: UsageError naming the jobs, before any image."""
    prepare_text(model, text.namespace())
    before, bad = model.clip_skip, []
    for job in jobs:
        if job.clip_skip is not None:
            try:
                model.clip_skip = job.clip_skip
            except ValueError as exc:
                bad.append(f"job {job.id!r} (line {job.line}): {exc}")
    model.clip_skip = before
    if bad:
        raise UsageError("clip_skip out of range; nothing was generated:\n  " + "\n  ".join(bad))
