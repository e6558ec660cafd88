"""The page's event handlers (gradio signatures) and their wiring; the logic is in handlers.py.

User errors (ValueError and subclasses) become `gr.Error`: a readable message in the page (and
an error with that message for API clients); the server keeps running and nothing is written.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..images import check_size
from ..region.tokens import Tokenizer
from . import handlers, regions
from .worker import GenerationStopped, Request, Worker

OUT = ["prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height",
       "batch_size", "weight_function", "weight_scale", "strength"]
GEN_IN = ["model", "prompt", "negative_prompt", "editor", "extra_colors", "table", "sampler", "steps",
          "cfg_scale", "seed", "width", "height", "batch_size", "weight_function", "weight_scale",
          "init_image", "strength", "compare", "keep_seed"]
PROGRESS = gr.Progress()  # gradio sees this default and passes each call its own tracker


def user_errors(fn: Callable) -> Callable:
    """Show a ValueError's message in the page instead of a stack trace."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


def _int(value: Any, name: str) -> int:
    if value is None or float(value) != int(float(value)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(float(value))


class UI:
    """Handlers bound to one Worker; `start` holds the scene the page opens on (prompt, map
    (H, W, 3) uint8, records, sampler, steps, cfg_scale, width, height, weight settings)."""

    def __init__(self, worker: Worker, start: dict[str, Any], tokenizer: Tokenizer):
        self.worker, self.start, self.tokenizer = worker, start, tokenizer
        self.downloads = tempfile.mkdtemp(prefix="pww-webui-")  # region files offered for download
        self._stops: dict[str, threading.Event] = {}
        # Per page: the table as its last change event sent it. A map read that started before
        # a label was typed merges with this, so its answer does not take the label away.
        self._tables: dict[str, list[list]] = {}

    # -- the opening scene
    def start_map(self) -> np.ndarray:
        """The opening map, quantised."""
        return handlers.quantized(handlers.editor_value(self.start["map"]), [], self.start["width"],
                                  self.start["height"])

    def start_editor(self) -> dict[str, Any]:
        """The editor's opening value."""
        return handlers.editor_value(self.start_map())

    def start_rows(self) -> list[list]:
        """Rows of the opening map with the opening scene's labels."""
        colors = list(handlers.shares_of(self.start_map()))
        listed = regions.rows_from_regions(regions.loads(regions.dumps(self.start["regions"])))
        return regions.merge_uploaded(regions.table_for_map(colors, None), listed)

    def start_legend(self) -> str:
        """Legend HTML of the opening scene."""
        return regions.label_report(self.start["prompt"], self.start_rows(), self.tokenizer,
                                    handlers.shares_of(self.start_map()))

    # -- painting and the table
    def on_editor(self, value: dict | None, extra: list[str], rows: list[list], prompt: str,
                  width: Any, height: Any, request: gr.Request) -> tuple[Any, ...]:
        """Editor changed: (quantised map, table rows). The table is sent only when its colours
        changed, so a label typed while this ran is never overwritten."""
        qmap = handlers.quantized(value, extra, _int(width, "width"), _int(height, "height"))
        typed = {str(r[0]).lower(): r for r in self._tables.get(request.session_hash or "", [])}
        rows = [typed.get(str(r[0]).lower(), r) if not str(r[1] or "").strip() else r for r in rows or []]
        table, _ = handlers.refresh(qmap, rows, prompt or "", self.tokenizer)
        same = [r[0] for r in table] == [str(r[0]).lower() for r in rows or []]
        return qmap, gr.skip() if same else table

    def on_labels(self, prompt: str, rows: list[list], qmap: np.ndarray | None,
                  request: gr.Request) -> str:
        """Prompt or table edited: flag labels that are not in the prompt."""
        self._tables[request.session_hash or ""] = [list(r) for r in rows or []]
        return regions.label_report(prompt or "", rows or [], self.tokenizer, handlers.shares_of(qmap))

    def show(self, qmap: np.ndarray, rows: list[list] | None, prompt: str) -> tuple[Any, ...]:
        """(editor value, quantised map, table rows, legend) for a map set by the server."""
        return (handlers.editor_value(qmap), qmap,
                *handlers.refresh(qmap, rows, prompt or "", self.tokenizer))

    def on_clear(self, width: Any, height: Any, prompt: str) -> tuple[Any, ...]:
        """A blank map (the background colour), the brush palette only, an empty table:
        (editor, extra colours, quantised map, rows, legend)."""
        blank = handlers.palette.blank_map(_int(width, "width"), _int(height, "height"))
        editor, *rest = self.show(blank, None, prompt)
        return editor, [], *rest

    def on_upload_map(self, path: str, width: Any, height: Any, rows: list[list], prompt: str
                      ) -> tuple[Any, ...]:
        """An uploaded map, resized (nearest) to the image size; its colours join the palette:
        (editor, extra colours, quantised map, rows, legend)."""
        rgb, extra = handlers.upload_map(path, _int(width, "width"), _int(height, "height"))
        editor, *rest = self.show(handlers.palette.quantize(rgb, handlers.active_palette(extra)),
                                  rows, prompt)
        return editor, extra, *rest

    def on_size(self, qmap: np.ndarray | None, width: Any, height: Any, rows: list[list],
                prompt: str) -> tuple[Any, ...]:
        """Width/height entered: the map follows (nearest), so the canvas is the image's size."""
        w, h = _int(width, "width"), _int(height, "height")
        check_size(w, h)
        base = qmap if qmap is not None else handlers.palette.blank_map(w, h)
        return self.show(handlers.palette.fit_map(Image.fromarray(base), w, h), rows, prompt)

    def on_fill(self, qmap: np.ndarray, color: str, rows: list[list], prompt: str,
                evt: gr.SelectData) -> tuple[Any, ...]:
        """Click on the quantised map: flood fill there with the fill colour."""
        x, y = evt.index
        return self.show(handlers.fill(qmap, x, y, color), rows, prompt)

    def on_export(self, rows: list[list], fmt: str) -> str:
        """The labelled rows as a file to download."""
        return str(handlers.export_table(rows, fmt, tempfile.mkdtemp(dir=self.downloads)))

    def on_import(self, path: str, rows: list[list], prompt: str, qmap: np.ndarray | None
                  ) -> tuple[list[list], str]:
        """An uploaded region file applied to the table."""
        merged = handlers.import_table(path, rows)
        return merged, regions.label_report(prompt, merged, self.tokenizer, handlers.shares_of(qmap))

    def on_reopen(self, path: str | None) -> list[Any]:
        """A dropped PNG: every setting, the map and the table come back."""
        if path is None:
            return [gr.skip()] * (len(OUT) + 5)
        meta = handlers.reopen(path)
        s = meta.get("settings", {})
        values = {"prompt": meta.get("prompt", ""), "negative_prompt": meta.get("negative_prompt", "")}
        values.update({k: s[k] for k in OUT if s.get(k) is not None})
        out = [values.get(k, gr.skip()) for k in OUT]
        if "map" not in meta:
            return out + [gr.skip()] * 5
        extra = handlers.palette.upload_palette(meta["map"])
        legend = regions.label_report(values["prompt"], meta["rows"], self.tokenizer,
                                      handlers.shares_of(meta["map"]))
        return out + [handlers.editor_value(meta["map"]), extra, meta["map"], meta["rows"], legend]

    # -- generation
    def request(self, model: str, prompt: str, negative_prompt: str, editor: dict | None,
                extra: list[str], rows: list[list], sampler: str, steps: Any, cfg_scale: Any,
                seed: Any, width: Any, height: Any, batch_size: Any, weight_function: str,
                weight_scale: Any, init_image: str | None, strength: Any, compare: bool) -> Request:
        """A Request from the page's values, checked (cheap checks only) before it queues."""
        w, h = _int(width, "width"), _int(height, "height")
        check_size(w, h)
        batch = _int(batch_size, "batch size")
        if not 1 <= batch <= 8:
            raise ValueError(f"batch size {batch}: choose 1 to 8")
        init = handlers.open_upload(init_image).convert("RGB") if init_image else None
        return Request(model=model, prompt=prompt or "", negative_prompt=negative_prompt or "",
                       color_map=handlers.quantized(editor, extra, w, h),
                       regions=regions.records_from_rows(rows or []), sampler=sampler,
                       steps=_int(steps, "steps"), cfg_scale=float(cfg_scale), seed=_int(seed, "seed"),
                       width=w, height=h, batch_size=batch, weight_function=weight_function,
                       weight_scale=float(weight_scale), init_image=init, strength=float(strength),
                       compare=bool(compare))

    def generate(self, model: str, prompt: str, negative_prompt: str, editor: dict | None,
                 extra: list[str], rows: list[list], sampler: str, steps: Any, cfg_scale: Any,
                 seed: Any, width: Any, height: Any, batch_size: Any, weight_function: str,
                 weight_scale: Any, init_image: str | None, strength: Any, compare: bool,
                 keep_seed: bool, request: gr.Request, progress: gr.Progress = PROGRESS
                 ) -> tuple[Any, ...]:
        """Generate: (gallery, settings text, seed box, last seed, results state)."""
        req = self.request(model, prompt, negative_prompt, editor, extra, rows, sampler, steps,
                           cfg_scale, seed, width, height, batch_size, weight_function,
                           weight_scale, init_image, strength, compare)
        stop = self._stops.setdefault(request.session_hash or "", threading.Event())
        stop.clear()

        def report(phase: str, done: int, total: int) -> None:
            progress((done, total), desc=f"{phase}: step {done}/{total}", unit="steps")

        try:
            result = self.worker.run(req, stop, report)
        except GenerationStopped:
            gr.Warning("stopped: nothing was written")
            return (gr.skip(),) * 5
        parameters = [image.info.get("parameters", "") for image in result.images]
        saved = ", ".join(p.name for p in result.paths)
        results = {"images": [(im, f"seed {result.seed + i}") for i, im in enumerate(result.images)],
                   "panels": [(p, f"seed {result.seed + i}: map | without PwW | with PwW")
                              for i, p in enumerate(result.panels)],
                   "attention": [(a, f"seed {result.seed + i}: where each label's words attended")
                                 for i, a in enumerate(result.attention)]}
        seed = result.seed if keep_seed else gr.skip()
        return (self.gallery(results, req.compare), "\n\n".join(parameters) + f"\n\nsaved: {saved}",
                seed, result.seed, results)

    @staticmethod
    def gallery(results: dict | None, compare: bool) -> list:
        """The gallery's items: comparison panels when asked for and made, else the images; then
        the attention maps (pww_ldm.heatmaps.attention_grid) of each image."""
        if not results:
            return []
        shown = results["panels"] if compare and results["panels"] else results["images"]
        return shown + results.get("attention", [])

    def on_stop(self, request: gr.Request) -> None:
        """Stop this page's generation at the next sampler step."""
        stop = self._stops.get(request.session_hash or "")
        if stop is not None:
            stop.set()

    def wire(self, c: dict[str, Any], app: Any) -> None:
        """Connect the components' events (and the page load of `app`) to the handlers."""
        from .wiring import wire

        wire(self, c, app)
