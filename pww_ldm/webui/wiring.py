"""Which component event calls which UI handler, with which inputs and outputs."""

from __future__ import annotations

from typing import Any

from .events import GEN_IN, OUT, UI, user_errors


def _wire_paint(ui: UI, c: dict[str, Any]) -> None:
    size = [c["width"], c["height"]]
    c["editor"].change(user_errors(ui.on_editor),
                       [c["editor"], c["extra_colors"], c["table"], c["prompt"], *size],
                       [c["qmap"], c["table"], c["legend"]], trigger_mode="always_last",
                       show_progress="hidden", api_name=False)
    c["clear"].click(user_errors(ui.on_clear), [*size, c["prompt"]],
                     [c["editor"], c["extra_colors"], c["qmap"], c["table"], c["legend"]], api_name=False)
    c["upload_map"].upload(user_errors(ui.on_upload_map), [c["upload_map"], *size],
                           [c["editor"], c["extra_colors"]], api_name=False)
    c["qmap"].select(user_errors(ui.on_fill), [c["qmap"], c["fill_color"]], c["editor"],
                     api_name=False)
    for box in size:
        for event in (box.submit, box.blur):
            event(user_errors(ui.on_size), [c["qmap"], *size], c["editor"], api_name=False)


def _wire_table(ui: UI, c: dict[str, Any]) -> None:
    for event in (c["prompt"].change, c["table"].change):
        event(user_errors(ui.on_labels), [c["prompt"], c["table"]], c["legend"],
              trigger_mode="always_last", show_progress="hidden", api_name=False)
    for fmt in ("json", "yaml"):
        c[f"export_{fmt}"].click(user_errors(lambda rows, f=fmt: ui.on_export(rows, f)), c["table"],
                                 c[f"export_{fmt}"], api_name=False)
    c["import"].upload(user_errors(ui.on_import), [c["import"], c["table"], c["prompt"]],
                       [c["table"], c["legend"]], api_name=False)
    c["reopen"].upload(user_errors(ui.on_reopen), c["reopen"],
                       [*(c[k] for k in OUT), c["editor"], c["extra_colors"], c["table"], c["legend"]],
                       api_name="reopen")


def wire(ui: UI, c: dict[str, Any]) -> None:
    """Connect every event of the page (components by name, as app.py builds them)."""
    _wire_paint(ui, c)
    _wire_table(ui, c)
    c["generate"].click(user_errors(ui.generate), [c[k] for k in GEN_IN],
                        [c["gallery"], c["info"], c["seed"], c["last_seed"], c["results"]],
                        api_name="generate", concurrency_limit=1, concurrency_id="generate")
    c["stop"].click(ui.on_stop, None, None, queue=False, api_name="stop")
    c["compare"].change(ui.gallery, [c["results"], c["compare"]], c["gallery"], api_name=False)
    c["reuse_seed"].click(lambda last, seed: seed if last is None else last,
                          [c["last_seed"], c["seed"]], c["seed"], api_name=False)
