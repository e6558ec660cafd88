"""The page: paint the map, name its colours, generate, compare, reopen (gradio Blocks).

`build_app(ui)` lays out the components and wires them to `UI`'s methods (pww_ldm.webui.events),
which hold the logic; nothing here runs until a server launches the Blocks.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..region import WEIGHT_FUNCTIONS
from ..samplers.registry import sampler_names
from . import palette, regions
from .events import UI
from .worker import MODES

CSS = """
.pww-swatch {display:inline-block; width:1.1em; height:1.1em; border:1px solid #888;
             vertical-align:middle}
.pww-legend {list-style:none; padding-left:0; margin:0} .pww-bad {color:#c00}
.pww-tokens code {margin-right:2px} .pww-hidden {display:none !important}
"""


def _paint_column(ui: UI) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Tab("Paint"):
        c["editor"] = gr.ImageEditor(
            value=ui.start_editor(), type="numpy", image_mode="RGB", format="png",
            canvas_size=(ui.start["width"], ui.start["height"]), sources=(), transforms=(),
            layers=False, label="colour map (brush, eraser, undo in the toolbar)",
            brush=gr.Brush(colors=list(palette.PALETTE), default_color=palette.PALETTE[1],
                           color_mode="fixed", default_size=max(2, ui.start["width"] // 16)),
            eraser=gr.Eraser(default_size=max(2, ui.start["width"] // 16)),
            elem_id="pww-editor", height=420)
        c["refresh"] = gr.Button("read the map", elem_id="pww-refresh", elem_classes=["pww-hidden"])
        with gr.Row():
            c["clear"] = gr.Button("Clear map", elem_id="pww-clear")
            c["upload_map"] = gr.UploadButton("Upload map", file_types=["image"], elem_id="pww-upload-map")
        with gr.Row():
            c["fill_color"] = gr.Dropdown(list(palette.PALETTE), value=palette.PALETTE[1],
                                          label="fill colour (click the quantised map to fill)",
                                          elem_id="pww-fill-color")
        c["qmap"] = gr.Image(value=ui.start_map(), type="numpy", format="png", interactive=False,
                             label="quantised map (what PwW sees; click to fill)", elem_id="pww-qmap",
                             height=260)
    with gr.Tab("img2img"):
        c["init_image"] = gr.Image(type="filepath", sources=["upload"], label="init image",
                                   elem_id="pww-init-image")
        c["strength"] = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="denoising strength")
    with gr.Tab("inpaint"):
        c.update(_inpaint_tab(ui))
    return c


def _inpaint_tab(ui: UI) -> dict[str, Any]:
    """Inpainting: the image to repaint with the mask painted on it (or uploaded) and A1111's
    mask options; the colour map of the Paint tab steers inside the repainted area."""
    c: dict[str, Any] = {}
    c["inpaint_editor"] = gr.ImageEditor(
        type="numpy", image_mode="RGBA", format="png", sources=("upload",), transforms=(),
        layers=False, label="image to repaint: upload it, paint the area to repaint (any colour)",
        brush=gr.Brush(colors=["#ffffff", "#000000", "#ff00ff"], default_color="#ff00ff",
                       color_mode="fixed", default_size=max(2, ui.start["width"] // 10)),
        eraser=gr.Eraser(default_size=max(2, ui.start["width"] // 10)), elem_id="pww-inpaint-editor",
        height=360)
    # A file, not an Image: gradio would decode an Image itself and answer a non-image with a
    # bare "error"; handlers.open_upload says what is wrong.
    c["mask_upload"] = gr.File(file_types=["image"], type="filepath", height=90,
                               label="or upload a mask (white = repaint; the image's size)",
                               elem_id="pww-mask-upload")
    with gr.Row():
        c["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="mask blur (px)")
        c["inpaint_strength"] = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="denoising strength")
    with gr.Row():
        c["invert_mask"] = gr.Checkbox(False, label="invert mask (repaint the unpainted area)")
        c["only_masked"] = gr.Checkbox(False, label="inpaint only masked (at full width x height)")
        c["only_masked_padding"] = gr.Slider(0, 256, value=32, step=4, label="only masked padding (px)")
    return c


def _regions_column(ui: UI) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["legend"] = gr.HTML(ui.start_legend(), elem_id="pww-legend")
    c["table"] = gr.Dataframe(value=ui.start_rows(), headers=regions.HEADERS,
                              datatype=regions.DATATYPES, type="array", interactive=True,
                              static_columns=[0],
                              label="regions (label of the prompt and/or the region's own prompt; "
                                    "weight, seed, blur, outside, occurrence)",
                              elem_id="pww-table")
    with gr.Row():
        exports = ui.on_export(ui.start_rows())
        c["export_json"] = gr.DownloadButton("Download JSON", exports[0], elem_id="pww-export-json")
        c["export_yaml"] = gr.DownloadButton("Download YAML", exports[1], elem_id="pww-export-yaml")
        c["import"] = gr.UploadButton("Upload JSON/YAML", file_types=[".json", ".yaml", ".yml"],
                                      elem_id="pww-import")
    return c


def _settings_column(ui: UI) -> dict[str, Any]:
    s, c = ui.start, {}
    c["model"] = gr.Dropdown(ui.worker.pool.names, value=ui.worker.pool.names[0], label="model")
    c["prompt"] = gr.Textbox(s["prompt"], lines=2, label="prompt", elem_id="pww-prompt")
    c["negative_prompt"] = gr.Textbox("", lines=1, label="negative prompt")
    with gr.Row():
        c["sampler"] = gr.Dropdown(sampler_names("a1111"), value=s["sampler"], label="sampler")
        c["steps"] = gr.Number(s["steps"], precision=0, minimum=1, label="steps", elem_id="pww-steps")
        c["cfg_scale"] = gr.Number(s["cfg_scale"], label="CFG scale")
    with gr.Row():
        c["seed"] = gr.Number(-1, precision=0, label="seed (-1 = random)", elem_id="pww-seed")
        c["reuse_seed"] = gr.Button("♻ last seed", min_width=60, elem_id="pww-reuse-seed")
        c["keep_seed"] = gr.Checkbox(True, label="keep the seed after a run", elem_id="pww-keep-seed")
    with gr.Row():
        c["width"] = gr.Number(s["width"], precision=0, label="width (multiple of 8)")
        c["height"] = gr.Number(s["height"], precision=0, label="height (multiple of 8)")
        c["batch_size"] = gr.Number(1, precision=0, minimum=1, maximum=8, label="batch size")
    with gr.Row():
        c["weight_function"] = gr.Dropdown(list(WEIGHT_FUNCTIONS), value=s["weight_function"],
                                           label="weight function")
        c["weight_scale"] = gr.Number(s["weight_scale"], label="weight scale")
        c["compare"] = gr.Checkbox(True, label="compare: map | without PwW | with PwW",
                                   elem_id="pww-compare")
    with gr.Row():
        c["mode"] = gr.Radio(list(MODES), value="txt2img", elem_id="pww-mode",
                             label="mode (an upload in img2img / inpaint picks it)")
        c["self_attention"] = gr.Number(0.0, minimum=0, label="DenseDiffusion self-attention (0 = off; "
                                        "paper 0.3)", elem_id="pww-self-attention")
        c["attention_guidance"] = gr.Number(
            0.0, minimum=0, label="attention guidance (0 = off)", elem_id="pww-attention-guidance",
            info="backward attention guidance (Chen et al. 2024), a step in noise std; off by default, "
                 "no gain measured on the demo model")
        c["base_ratio"] = gr.Number(
            1.0, minimum=0, maximum=1, label="base ratio (regions with their own prompt)",
            elem_id="pww-base-ratio",
            info="the prompt's share of attention inside regions that have their own prompt: 1 = "
                 "unchanged, 0 = only the region's prompt there (with the objects named only in "
                 "their regions, 0 draws no duplicates on the demo model)")
    c.update(_approx_row())
    with gr.Row():
        c["generate"] = gr.Button("Generate", variant="primary", elem_id="pww-generate")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="pww-stop")
    c["gallery"] = gr.Gallery(label="output", format="png", columns=1, object_fit="contain",
                              height="auto", elem_id="pww-gallery")
    c["info"] = gr.Textbox(label="settings of the images", lines=3, elem_id="pww-info")
    c["reopen"] = gr.File(label="reopen: drop a PNG this tool wrote", file_types=[".png"],
                          elem_id="pww-reopen")
    c["last_seed"] = gr.State(None)
    c["results"] = gr.State(None)
    c["extra_colors"] = gr.State([])
    c["colors"] = gr.State(None)  # the colours of the last map read, for the table's update
    return c


def _approx_row() -> dict[str, Any]:
    """The UNet's approximations (pww_ldm.approx, the scripts' --tome / --deepcache /
    --deepcache-branch), off by default. No minimum / maximum: the page's check gives the
    scripts' message for a bad value, not gradio's."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["tome"] = gr.Number(
            0.0, step=0.05, label="Token merging (ToMe) ratio", elem_id="pww-tome",
            info="approximate, faster: this share of the finest level's self-attention tokens is "
                 "merged, in [0, 1); 0 = off (exact), 0.5 is tomesd's default")
        c["deepcache"] = gr.Number(
            0, precision=0, label="DeepCache interval", elem_id="pww-deepcache",
            info="approximate, faster: the whole UNet every N-th call, only its shallow blocks in "
                 "between; 0 or 1 = off (exact), e.g. 3")
        c["deepcache_branch"] = gr.Number(
            1, precision=0, label="DeepCache branch", elem_id="pww-deepcache-branch",
            info="the shallow blocks: input blocks 0..B and their output blocks (default 1; "
                 "larger = slower and closer)")
    return c


def build_app(ui: UI) -> gr.Blocks:
    """The Blocks of the page, wired to `ui`."""
    with gr.Blocks(title="Paint-with-Words") as app:
        gr.Markdown("## Paint-with-Words — paint a map, name its colours, generate")
        with gr.Row():
            with gr.Column(scale=1):
                c = _paint_column(ui)
                c.update(_regions_column(ui))
            with gr.Column(scale=1):
                c.update(_settings_column(ui))
        ui.wire(c, app)
    return app


def launch_kwargs() -> dict[str, Any]:
    """Keywords for Blocks.launch that every server uses (upload limit, styling)."""
    return {"max_file_size": "20mb", "css": CSS}
