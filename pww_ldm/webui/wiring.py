"""Which component event calls which UI handler, with which inputs and outputs."""

from __future__ import annotations

from typing import Any

from .events import GEN_IN, OUT, UI, user_errors

# gradio 6's ImageEditor drops the first change event it sees (meant for its initial value, which
# here sends none), and under load its change events reach the server tens of seconds late, when
# they would overwrite labels typed meanwhile. So the page does not listen to them: each pointer
# release on the editor's canvas or its undo / redo / clear buttons clicks a hidden button whose
# event reads the editor's value at once.
REFRESH_ON_POINTERUP = """() => {
  const editor = document.querySelector("#pww-editor");
  const edits = "canvas, button[aria-label='Undo'], button[aria-label='Redo'], " +
                "button[aria-label='Clear canvas']";
  const refresh = () => document.querySelector("#pww-refresh")?.click();
  editor?.addEventListener("pointerup", (e) => {
    if (e.target.closest(edits)) setTimeout(refresh, 300);
  }, true);
}"""


def _wire_paint(ui: UI, c: dict[str, Any]) -> None:
    size = [c["width"], c["height"]]
    shown = [c["editor"], c["qmap"], c["table"], c["legend"]]
    table = [c["table"], c["prompt"]]
    # Two steps, so a label typed while the map is read is not reverted: the read (queued, maybe
    # slow) returns the map and its colours only; the table is then updated from its value as
    # the page holds it at that moment, in a short unqueued call.
    c["refresh"].click(user_errors(ui.on_read), [c["editor"], c["extra_colors"], *size],
                       [c["qmap"], c["colors"]], trigger_mode="always_last", show_progress="hidden",
                       api_name=False
                       ).then(user_errors(ui.on_colors), [c["colors"], *table, c["qmap"]],
                              [c["table"], c["legend"]], queue=False, show_progress="hidden",
                              api_name=False)
    c["clear"].click(user_errors(ui.on_clear), [*size, c["prompt"]],
                     [c["editor"], c["extra_colors"], *shown[1:]], api_name=False)
    c["upload_map"].upload(user_errors(ui.on_upload_map), [c["upload_map"], *size, *table],
                           [c["editor"], c["extra_colors"], *shown[1:]], api_name=False)
    c["qmap"].select(user_errors(ui.on_fill), [c["qmap"], c["fill_color"], *table], shown,
                     api_name=False)
    for box in size:
        for event in (box.submit, box.blur):
            event(user_errors(ui.on_size), [c["qmap"], *size, *table], shown, api_name=False)


def _wire_table(ui: UI, c: dict[str, Any]) -> None:
    shown = [c["qmap"], c["table"], c["legend"]]
    for event in (c["prompt"].change, c["table"].change):
        event(user_errors(ui.on_labels), [c["prompt"], c["table"], c["qmap"]], c["legend"],
              trigger_mode="always_last", show_progress="hidden", api_name=False)
    c["table"].change(ui.on_export, c["table"], [c["export_json"], c["export_yaml"]], queue=False,
                      trigger_mode="always_last", show_progress="hidden", api_name=False)
    c["import"].upload(user_errors(ui.on_import), [c["import"], c["table"], c["prompt"], c["qmap"]],
                       [c["table"], c["legend"]], api_name=False)
    c["reopen"].upload(user_errors(ui.on_reopen), c["reopen"],
                       [*(c[k] for k in OUT), c["editor"], c["extra_colors"], *shown],
                       api_name="reopen")


def wire(ui: UI, c: dict[str, Any], app: Any) -> None:
    """Connect every event of the page (components by name, as app.py builds them)."""
    app.load(None, None, None, js=REFRESH_ON_POINTERUP, api_name=False)
    _wire_paint(ui, c)
    _wire_table(ui, c)
    c["generate"].click(user_errors(ui.generate), [c[k] for k in GEN_IN],
                        [c["gallery"], c["info"], c["seed"], c["last_seed"], c["results"]],
                        api_name="generate", concurrency_limit=1, concurrency_id="generate")
    c["stop"].click(ui.on_stop, None, None, queue=False, api_name="stop")
    c["compare"].change(ui.gallery, [c["results"], c["compare"]], c["gallery"], api_name=False)
    c["reuse_seed"].click(lambda last, seed: seed if last is None else last,
                          [c["last_seed"], c["seed"]], c["seed"], api_name=False)
    c["init_image"].upload(lambda _: "img2img", c["init_image"], c["mode"], api_name=False)
    c["inpaint_editor"].upload(lambda _: "inpaint", c["inpaint_editor"], c["mode"], api_name=False)
