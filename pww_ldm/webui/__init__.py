"""The Paint-with-Words web UI (gradio): paint a colour map, name its colours, generate.

Start it with `pww-webui` or `python scripts/webui_pww.py`; `server.create_app` builds the page
for tests. palette, regions and pngmeta are plain numpy / JSON and import no gradio.
"""
