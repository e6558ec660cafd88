"""Generation for the web UI: the models the server offers, one generation at a time per model,
Stop between sampler steps, and the outputs saved atomically with their settings.

Every request carries all its settings in a `Request`; nothing of one request is kept where
another could read it (the model is shared, read-only, behind its lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..approx import Approximations
from ..heatmaps import attention_grid, label_masks
from ..images import check_size, image_grid, save_png
from ..pipeline import resolve_seed
from ..region import parse_color_context
from ..region.features import FeatureOptions
from .pngmeta import pww_chunk

MODEL_SUFFIXES = (".safetensors", ".ckpt")
MODES = ("txt2img", "img2img", "inpaint")
Progress = Callable[[str, int, int], None]  # (phase, step done, total steps)


class GenerationStopped(Exception):
    """Raised from the sampler callback when the user pressed Stop."""


class UnknownModelError(ValueError):
    """A model name that is not in the server's list (clients never name a path)."""


def find_models(models_dir: str | Path | None, default: Path) -> dict[str, Path]:
    """{name: checkpoint path} the server offers: `default` first, then every .safetensors /
    .ckpt under models_dir (name = path relative to it)."""
    models = {f"{default.parent.name}/{default.name}": default}
    if models_dir is not None:
        root = Path(models_dir)
        for path in sorted(root.rglob("*")):
            if path.suffix in MODEL_SUFFIXES and path.is_file() and path.resolve() != default.resolve():
                models[str(path.relative_to(root))] = path
    return models


class ModelPool:
    """Models by name, each loaded once (the default at start, others on first use), each with
    the lock that keeps its generations one at a time."""

    def __init__(self, models: dict[str, Path], loader: Callable[..., Any], **load_kwargs: Any):
        self.paths = dict(models)
        self._loader, self._load_kwargs = loader, load_kwargs
        self._models: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in self.paths}
        self._load_lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """The model names a client may choose from."""
        return list(self.paths)

    def get(self, name: str) -> tuple[Any, threading.Lock]:
        """(model, its generation lock); UnknownModelError for a name not offered."""
        if name not in self.paths:
            raise UnknownModelError(f"model {name!r} is not offered by this server; choose one of "
                                    f"{self.names}")
        with self._load_lock:
            if name not in self._models:
                self._models[name] = self._loader(self.paths[name], **self._load_kwargs)
        return self._models[name], self._locks[name]


@dataclass(frozen=True)
class Request:
    """One generation: every setting, as the page sends them. color_map: (H, W, 3) uint8, the
    quantised map at width x height; regions: colour-context records of the named colours.
    mode: "txt2img", "img2img" (init_image, strength) or "inpaint" (init_image, mask: "L" image
    of init_image's size, white = repaint, with A1111's mask blur / invert / only-masked options;
    strength is then the inpaint tab's). self_attention: DenseDiffusion's w^s (0 = off);
    attention_guidance: FeatureOptions.guidance, the backward guidance step (0 = off);
    base_ratio: FeatureOptions.base_ratio, the prompt's share inside own-prompt regions.
    approx: the UNet's approximations (ToMe, DeepCache; the default: none), kept as asked even
    when off, so the saved settings give back the fields as they were."""

    model: str
    prompt: str
    negative_prompt: str
    color_map: np.ndarray
    regions: list[dict[str, Any]]
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.5
    seed: int = -1
    width: int = 512
    height: int = 512
    batch_size: int = 1
    weight_function: str = "std"
    weight_scale: float = 8.0
    init_image: Image.Image | None = field(default=None, repr=False)
    strength: float = 0.6
    compare: bool = True
    mode: str = "txt2img"
    mask: Image.Image | None = field(default=None, repr=False)
    mask_blur: float = 4.0
    invert_mask: bool = False
    only_masked: bool = False
    only_masked_padding: int = 32
    self_attention: float = 0.0
    attention_guidance: float = 0.0
    base_ratio: float = 1.0
    approx: Approximations = field(default_factory=Approximations)

    def settings(self, seed: int) -> dict[str, Any]:
        """The UI fields saved in the `pww` chunk, with the seed actually used."""
        out = {"sampler": self.sampler, "steps": self.steps, "cfg_scale": self.cfg_scale,
               "seed": seed, "width": self.width, "height": self.height,
               "batch_size": self.batch_size, "weight_function": self.weight_function,
               "weight_scale": self.weight_scale, "mode": self.mode,
               "self_attention": self.self_attention, "attention_guidance": self.attention_guidance,
               "base_ratio": self.base_ratio, "tome": self.approx.tome,
               "deepcache": self.approx.deepcache, "deepcache_branch": self.approx.deepcache_branch,
               "strength": self.strength if self.mode == "img2img" else None}
        if self.mode == "inpaint":
            out.update(inpaint_strength=self.strength, mask_blur=self.mask_blur,
                       invert_mask=self.invert_mask, only_masked=self.only_masked,
                       only_masked_padding=self.only_masked_padding)
        return out

    def inpaint_options(self) -> dict[str, Any]:
        """The pww_ldm.inpaint keywords of an inpaint request (none for the other modes)."""
        if self.mode != "inpaint":
            return {}
        return dict(mask_image=self.mask, mask_blur=self.mask_blur, invert_mask=self.invert_mask,
                    only_masked=self.only_masked, only_masked_padding=self.only_masked_padding)


@dataclass
class Result:
    """images: with PwW; plain: the same seeds without PwW ([] unless compare); panels: map |
    without | with per image ([] unless compare); attention: per image, map | image | where each
    label's words attended (pww_ldm.heatmaps.attention_grid); paths: files written; seed: of
    image 0."""

    images: list[Image.Image]
    plain: list[Image.Image]
    panels: list[Image.Image]
    attention: list[Image.Image]
    paths: list[Path]
    seed: int


class Worker:
    """Runs Requests on a ModelPool and writes their images under outdir/samples."""

    def __init__(self, pool: ModelPool, outdir: str | Path):
        self.pool = pool
        self.outdir = Path(outdir)
        self._save_lock = threading.Lock()  # numbering files: two requests never pick one name

    def run(self, request: Request, stop: threading.Event | None = None,
            progress: Progress | None = None) -> Result:
        """Generate (with PwW, then without when request.compare), save, return the Result.

        Raises the engine's ValueError subclasses for bad input before sampling, and
        GenerationStopped when `stop` is set between two steps (nothing is written then).
        """
        check_size(request.width, request.height)
        if not request.regions:
            raise ValueError("nothing to paint: give at least one colour of the map a label "
                             "(the labels must be words of the prompt) or its own prompt")
        model, lock = self.pool.get(request.model)
        seed = resolve_seed(request.seed)
        # Both runs share these, the approximations too: the comparison differs by PwW alone.
        common = dict(steps=request.steps, guidance_scale=request.cfg_scale, seed=seed,
                      sampler=request.sampler, negative_prompt=request.negative_prompt,
                      width=request.width, height=request.height, n_images=request.batch_size,
                      progress=False, approx=request.approx if request.approx.active else None,
                      **request.inpaint_options())
        if request.init_image is not None:
            common.update(init_image=request.init_image, strength=request.strength)
        color_map = Image.fromarray(request.color_map)
        with lock:
            images, maps = self._with_pww(model, request, color_map, common, stop, progress)
            plain = []
            if request.compare:
                plain = self._without_pww(model, request, common, stop, progress)
        shown = color_map.resize(images[0].size, Image.NEAREST)  # inpaint "only masked": the init's size
        panels = [image_grid([shown, p, i]) for p, i in zip(plain, images)]
        attention = []
        if maps:
            masks = label_masks(shown, parse_color_context(request.regions), images[0].size)
            attention = [attention_grid(image, maps, masks, shown, row) for row, image in enumerate(images)]
        return Result(images, plain, panels, attention, self._save(request, seed, images, panels),
                      seed)

    def _with_pww(self, model: Any, request: Request, color_map: Image.Image, common: dict[str, Any],
                  stop: threading.Event | None, progress: Progress | None
                  ) -> tuple[list[Image.Image], dict[str, Any]]:
        """(images with PwW, attention maps by label; none for inpainting: the engine has none)."""
        import pww_ldm

        features = FeatureOptions(self_attention=request.self_attention,
                                  guidance=request.attention_guidance, base_ratio=request.base_ratio)
        # "Only masked" crops the map with the image: a region outside the crop paints nothing
        # there and is dropped, not an error (the page checked every colour on the whole map).
        cropped = request.mode == "inpaint" and request.only_masked
        out = pww_ldm.paint_with_words(
            model, request.prompt, color_map, request.regions, return_attention=request.mode != "inpaint",
            weight_function=request.weight_function, weight_scale=request.weight_scale,
            features=features, strict=not cropped,
            callback=self._callback("with PwW", request, stop, progress), **common)
        return out if request.mode != "inpaint" else (out, {})

    def _without_pww(self, model: Any, request: Request, common: dict[str, Any],
                     stop: threading.Event | None, progress: Progress | None) -> list[Image.Image]:
        """The same seeds and settings without Paint-with-Words (the comparison's middle panel)."""
        import pww_ldm

        callback = self._callback("without PwW", request, stop, progress)
        if request.mode == "inpaint":
            kw = dict(common)
            return pww_ldm.inpaint(model, request.prompt, kw.pop("init_image"), kw.pop("mask_image"),
                                   callback=callback, **kw)
        return pww_ldm.generate(model, request.prompt, callback=callback, **common)

    @staticmethod
    def _callback(phase: str, request: Request, stop: threading.Event | None,
                  progress: Progress | None) -> Callable[[dict], None]:
        total = request.steps
        if request.init_image is not None:  # img2img runs only the last `strength` of the steps
            total = max(1, int(request.steps * request.strength))

        def callback(state: dict) -> None:
            if stop is not None and stop.is_set():
                raise GenerationStopped("stopped by the user")
            if progress is not None:
                progress(phase, min(state["i"] + 1, total), total)
        return callback

    def _save(self, request: Request, seed: int, images: list[Image.Image],
              panels: list[Image.Image]) -> list[Path]:
        samples = self.outdir / "samples"
        written = []
        with self._save_lock:
            samples.mkdir(parents=True, exist_ok=True)
            count = len(list(samples.glob("*.png")))
            for i, image in enumerate(images):
                chunk = pww_chunk(request.prompt, request.negative_prompt,
                                  request.settings(seed + i), request.regions, request.color_map)
                path = samples / f"{count + i:05}.png"
                written.append(save_png(image, path, image.info.get("parameters"), {"pww": chunk}))
                if i < len(panels):
                    written.append(save_png(panels[i], self.outdir / f"compare-{count + i:05}.png",
                                            image.info.get("parameters")))
        return written
