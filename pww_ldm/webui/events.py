"""The page's event handlers (gradio signatures) and their wiring; the logic is in handlers.py.

User errors (ValueError and subclasses) become `gr.Error`: a readable message in the page (and
an error with that message for API clients); the server keeps running and nothing is written.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..images import check_size
from ..region.tokens import Tokenizer
from . import handlers, regions
from .inputs import build_request, whole
from .worker import GenerationStopped, Worker

# Fields a reopened PNG sets, in this order (the first twelve are the original's: API clients
# index the answer); the pww chunk saves them under these names (Request.settings).
OUT = ["prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height",
       "batch_size", "weight_function", "weight_scale", "strength", "mode", "self_attention",
       "inpaint_strength", "mask_blur", "invert_mask", "only_masked", "only_masked_padding",
       "attention_guidance", "base_ratio", "tome", "deepcache", "deepcache_branch"]
GEN_IN = ["model", "prompt", "negative_prompt", "editor", "extra_colors", "table", "sampler", "steps",
          "cfg_scale", "seed", "width", "height", "batch_size", "weight_function", "weight_scale",
          "init_image", "strength", "compare", "keep_seed", "mode", "self_attention", "inpaint_editor",
          "mask_upload", "mask_blur", "invert_mask", "only_masked", "only_masked_padding",
          "inpaint_strength", "attention_guidance", "base_ratio", "tome", "deepcache",
          "deepcache_branch"]
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


class UI:
    """Handlers bound to one Worker; `start` holds the scene the page opens on (prompt, map
    (H, W, 3) uint8, records, sampler, steps, cfg_scale, width, height, weight settings)."""

    def __init__(self, worker: Worker, start: dict[str, Any], tokenizer: Tokenizer):
        self.worker, self.start, self.tokenizer = worker, start, tokenizer
        self.downloads = tempfile.mkdtemp(prefix="pww-webui-")  # region files offered for download
        self._stops: dict[str, threading.Event] = {}

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
    def on_read(self, value: dict | None, extra: list[str], width: Any, height: Any
                ) -> tuple[np.ndarray, list[str]]:
        """The editor's value read: (quantised map, its colours, most pixels first). The table is
        not touched here: `on_colors` updates it afterwards from the table as it is then."""
        qmap = handlers.quantized(value, extra, whole(width, "width"), whole(height, "height"))
        return qmap, list(handlers.shares_of(qmap))

    def on_colors(self, colors: list[str] | None, rows: list[list], prompt: str,
                  qmap: np.ndarray | None) -> tuple[Any, str]:
        """After a map read: (table rows for its colours, legend). `rows` is the table as the
        page holds it when the read is done, so labels typed while the map was read are kept;
        the table is sent only when its colours changed, so a row being edited is left alone."""
        if colors is None:
            return gr.skip(), gr.skip()
        table = regions.table_for_map(colors, rows)
        same = [r[0] for r in table] == [str(r[0]).lower() for r in rows or []]
        legend = regions.label_report(prompt or "", table, self.tokenizer, handlers.shares_of(qmap))
        return (gr.skip() if same else table), legend

    def on_labels(self, prompt: str, rows: list[list], qmap: np.ndarray | None) -> str:
        """Prompt or table edited: flag labels that are not in the prompt."""
        return regions.label_report(prompt or "", rows or [], self.tokenizer, handlers.shares_of(qmap))

    def show(self, qmap: np.ndarray, rows: list[list] | None, prompt: str) -> tuple[Any, ...]:
        """(editor value, quantised map, table rows, legend) for a map set by the server."""
        return (handlers.editor_value(qmap), qmap,
                *handlers.refresh(qmap, rows, prompt or "", self.tokenizer))

    def on_clear(self, width: Any, height: Any, prompt: str) -> tuple[Any, ...]:
        """A blank map (the background colour), the brush palette only, an empty table:
        (editor, extra colours, quantised map, rows, legend)."""
        blank = handlers.palette.blank_map(whole(width, "width"), whole(height, "height"))
        editor, *rest = self.show(blank, None, prompt)
        return editor, [], *rest

    def on_upload_map(self, path: str, width: Any, height: Any, rows: list[list], prompt: str
                      ) -> tuple[Any, ...]:
        """An uploaded map, resized (nearest) to the image size; its colours join the palette:
        (editor, extra colours, quantised map, rows, legend)."""
        rgb, extra = handlers.upload_map(path, whole(width, "width"), whole(height, "height"))
        editor, *rest = self.show(handlers.palette.quantize(rgb, handlers.active_palette(extra)),
                                  rows, prompt)
        return editor, extra, *rest

    def on_size(self, qmap: np.ndarray | None, width: Any, height: Any, rows: list[list],
                prompt: str) -> tuple[Any, ...]:
        """Width/height entered: the map follows (nearest), so the canvas is the image's size."""
        w, h = whole(width, "width"), whole(height, "height")
        check_size(w, h)
        base = qmap if qmap is not None else handlers.palette.blank_map(w, h)
        return self.show(handlers.palette.fit_map(Image.fromarray(base), w, h), rows, prompt)

    def on_fill(self, qmap: np.ndarray, color: str, rows: list[list], prompt: str,
                evt: gr.SelectData) -> tuple[Any, ...]:
        """Click on the quantised map: flood fill there with the fill colour."""
        x, y = evt.index
        return self.show(handlers.fill(qmap, x, y, color), rows, prompt)

    def on_export(self, rows: list[list] | None) -> tuple[str | None, str | None]:
        """The table as regions.json and regions.yaml, the download buttons' values (kept up to
        date on each table change: a download button offers the file it holds when clicked).
        None for a table with a bad cell: generating names it. One folder per content, so
        repeated edits do not pile files up."""
        try:
            text = regions.dumps(regions.records_from_rows(rows or []))
        except regions.RegionTableError:
            return None, None
        folder = Path(self.downloads) / hashlib.sha256(text.encode()).hexdigest()[:16]
        return (str(handlers.export_table(rows or [], "json", folder)),
                str(handlers.export_table(rows or [], "yaml", folder)))

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
    def generate(self, model: str, prompt: str, negative_prompt: str, editor: dict | None,
                 extra_colors: list[str], table: list[list], sampler: str, steps: Any, cfg_scale: Any,
                 seed: Any, width: Any, height: Any, batch_size: Any, weight_function: str,
                 weight_scale: Any, init_image: str | None, strength: Any, compare: bool,
                 keep_seed: bool, mode: str, self_attention: Any, inpaint_editor: dict | None,
                 mask_upload: str | None, mask_blur: Any, invert_mask: bool, only_masked: bool,
                 only_masked_padding: Any, inpaint_strength: Any, attention_guidance: Any,
                 base_ratio: Any, tome: Any, deepcache: Any, deepcache_branch: Any,
                 request: gr.Request,
                 progress: gr.Progress = PROGRESS) -> tuple[Any, ...]:
        """Generate: (gallery, settings text, seed box, last seed, results state). The parameters
        are GEN_IN's, spelt out because gradio names the API's parameters after them."""
        values = {name: value for name, value in locals().items() if name in GEN_IN}
        req = build_request(values)
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
