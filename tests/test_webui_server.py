"""The web UI served for real on the demo model: API calls with gradio_client (txt2img, img2img,
inpaint, bad inputs, Stop, concurrency, reopen). The page in a real browser: test_webui_browser."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pww_ldm.webui import events, pngmeta, regions
from pww_ldm.webui.server import DEMO_DIR, create_app

DEMO_MAP = str(DEMO_DIR / "demo_map.png")
PROMPT = "a red circle, a blue square and a yellow star with sky and ground"
ROWS = [["#ffffff", "", "", "", 1.0, -1, 0.0, 0.0, 0],
        ["#dc1e1e", "red circle", "", "", 1.0, -1, 0.0, 0.0, 0],
        ["#1e3cdc", "blue square", "", "", 1.0, -1, 0.0, 0.0, 0],
        ["#f5d71e", "yellow star", "", "", 1.0, -1, 0.0, 0.0, 0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from pww_ldm.webui.app import launch_kwargs

    outdir = tmp_path_factory.mktemp("webui-out")
    app = create_app(outdir=outdir, device="cpu")
    port = _free_port()
    app.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port,
                                                  prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield {"url": f"http://127.0.0.1:{port}/", "outdir": outdir}
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def _editor(path: str, layers=()) -> dict:
    return {"background": handle_file(path), "layers": [handle_file(p) for p in layers],
            "composite": handle_file(path), "id": None}


def _generate(client: Client, rows=ROWS, prompt=PROMPT, **settings):
    args = dict(model="pww-demo/model.safetensors", prompt=prompt, negative_prompt="",
                editor=_editor(DEMO_MAP), table={"headers": regions.HEADERS, "data": rows, "metadata": None},
                sampler="Euler a", steps=4, cfg_scale=7.5, seed=7, width=64, height=64, batch_size=1,
                weight_function="std", weight_scale=8.0, init_image=None, strength=0.6,
                compare=True, keep_seed=True, mode="txt2img", self_attention=0.0, inpaint_editor=None,
                mask_upload=None, mask_blur=4, invert_mask=False, only_masked=False,
                only_masked_padding=32, inpaint_strength=0.75, attention_guidance=0.0, base_ratio=1.0,
                tome=0.0, deepcache=0, deepcache_branch=1)
    args.update(settings)
    return args, client.submit(**args, api_name="/generate")


def _samples(server) -> list[Path]:
    return sorted((server["outdir"] / "samples").glob("*.png"))


@pytest.mark.slow
def test_generate_returns_the_asked_size_differing_from_no_pww_and_reopens(server, client):
    _, job = _generate(client, width=64, height=48, seed=7)
    gallery, info, seed = job.result(timeout=120)
    panel = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert panel.shape == (48, 3 * 64, 3)  # map | without PwW | with PwW
    plain, pww = panel[:, 64:128].astype(int), panel[:, 128:].astype(int)
    assert np.abs(plain - pww).mean() > 2.0
    assert seed == 7 and "Seed: 7" in info and "Size: 64x48" in info
    # under the image: colour map | image | one attention heatmap per label (three labels)
    assert len(gallery) == 2 and "attended" in gallery[1]["caption"]
    assert Image.open(gallery[1]["image"]).width == (2 + 3) * 64
    saved = _samples(server)[-1]
    assert Image.open(saved).size == (64, 48)
    meta = pngmeta.read_png(saved.read_bytes())
    assert meta["settings"]["seed"] == 7 and [r["label"] for r in meta["regions"]] == [
        "red circle", "blue square", "yellow star"]
    reopened = client.predict(handle_file(str(saved)), api_name="/reopen")
    assert reopened[0] == PROMPT and reopened[5] == 7 and (reopened[6], reopened[7]) == (64, 48)


@pytest.mark.slow
@pytest.mark.parametrize("settings, message", [
    (dict(width=100), "width and height must be positive multiples of 8"),
    (dict(prompt="a red circle"), "label 'blue square'.*is not in the prompt"),
    (dict(rows=[[r[0], "", *r[2:]] for r in ROWS]), "nothing to paint"),
    (dict(rows=[[*ROWS[1][:4], "heavy", *ROWS[1][5:]]]), "row 1 \\(weight\\)"),
    (dict(sampler="Euler b"), "Euler b"),
    (dict(model="/etc/passwd"), "not in the list of choices"),  # no client-named paths
])
def test_bad_inputs_return_the_message_and_write_nothing(server, client, settings, message):
    before = _samples(server)
    _, job = _generate(client, **settings)
    with pytest.raises(AppError, match=message):
        job.result(timeout=120)
    assert _samples(server) == before
    gallery, _, _ = _generate(client)[1].result(timeout=120)  # the server still serves
    assert gallery


@pytest.mark.slow
def test_reopen_rejects_a_png_without_settings(client, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(AppError, match="no generation settings"):
        client.predict(handle_file(str(plain)), api_name="/reopen")


@pytest.mark.slow
def test_two_concurrent_requests_complete_with_their_own_settings(client):
    jobs = [_generate(client, seed=11, width=64, height=64, steps=3)[1],
            _generate(client, seed=12, width=48, height=32, steps=5)[1]]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda j: j.result(timeout=180), jobs))
    for (gallery, info, seed), (w, h, s, steps) in zip(results, [(64, 64, 11, 3), (48, 32, 12, 5)]):
        assert seed == s and f"Seed: {s}," in info and f"Size: {w}x{h}" in info
        assert f"Steps: {steps}," in info
        assert Image.open(gallery[0]["image"]).size == (3 * w, h)


@pytest.mark.slow
def test_stop_interrupts_between_steps_and_writes_nothing(server, client):
    before = _samples(server)
    started = time.perf_counter()
    _, job = _generate(client, steps=400, compare=False)
    deadline = time.perf_counter() + 60
    while job.status().code.name not in ("PROCESSING", "PROGRESS", "ITERATING", "FINISHED"):
        assert time.perf_counter() < deadline, f"the job never started: {job.status()}"
        time.sleep(0.1)
    time.sleep(1.0)
    client.predict(api_name="/stop")  # the same client: the same session as the job
    job.result(timeout=120)
    elapsed = time.perf_counter() - started
    _, full = _generate(client, steps=40, compare=False)
    t0 = time.perf_counter()
    full.result(timeout=120)
    per_step = (time.perf_counter() - t0) / 40
    assert elapsed < 400 * per_step / 2  # stopped well before its 400 steps
    assert len(_samples(server)) == len(before) + 1  # only the 40-step run wrote an image


def _init_image(tmp_path, size=(64, 64)) -> str:
    """A smooth colour gradient (a photo-like init image) as a PNG file."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    path = tmp_path / "init.png"
    Image.fromarray(rgb).save(path)
    return str(path)


@pytest.mark.slow
def test_img2img_tab_starts_from_the_init_image_with_its_strength(server, client, tmp_path):
    init = _init_image(tmp_path)
    plain, _, _ = _generate(client, compare=False, seed=21)[1].result(timeout=120)
    gallery, info, _ = _generate(client, compare=False, seed=21, mode="img2img",
                                 init_image=handle_file(init), strength=0.5)[1].result(timeout=120)
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    txt = np.asarray(Image.open(plain[0]["image"]).convert("RGB")).astype(int)
    assert out.shape == (64, 64, 3) and np.abs(out - txt).mean() > 2.0  # the init image mattered
    assert "Denoising strength: 0.5" in info
    settings = pngmeta.read_png(_samples(server)[-1].read_bytes())["settings"]
    assert settings["mode"] == "img2img" and settings["strength"] == 0.5


@pytest.mark.slow
def test_inpaint_tab_repaints_only_the_mask_with_pww_and_says_so(server, client, tmp_path):
    init = _init_image(tmp_path)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    gallery, info, _ = _generate(client, seed=5, mode="inpaint", inpaint_editor=_editor(init),
                                 mask_upload=handle_file(str(mask_path)), mask_blur=0,
                                 inpaint_strength=1.0)[1].result(timeout=120)
    panel = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    assert panel.shape == (64, 3 * 64, 3) and len(gallery) == 1  # no attention maps: none in inpaint
    original = np.asarray(Image.open(init).convert("RGB")).astype(int)
    plain, pww = panel[:, 64:128], panel[:, 128:]
    for image in (plain, pww):  # mask blur 0: the kept half is the original exactly
        assert (image[:, :32] == original[:, :32]).all()
        assert np.abs(image[:, 32:] - original[:, 32:]).mean() > 10
    assert np.abs(plain[:, 32:] - pww[:, 32:]).mean() > 2.0  # PwW steered inside the mask
    assert "Mask blur: 0" in info and "Denoising strength: 1.0" in info
    meta = pngmeta.read_png(_samples(server)[-1].read_bytes())
    assert meta["settings"]["mode"] == "inpaint" and meta["settings"]["mask_blur"] == 0
    reopened = client.predict(handle_file(str(_samples(server)[-1])), api_name="/reopen")
    assert reopened[events.OUT.index("mode")] == "inpaint"


@pytest.mark.slow
def test_inpaint_mask_painted_as_strokes_and_bad_masks_are_messages(server, client, tmp_path):
    init = _init_image(tmp_path)
    layer = np.zeros((64, 64, 4), dtype=np.uint8)
    layer[8:24, 8:40] = (255, 0, 255, 255)  # one stroke, top left
    layer_path = tmp_path / "layer.png"
    Image.fromarray(layer).save(layer_path)
    gallery, _, _ = _generate(client, seed=5, mode="inpaint", compare=False, mask_blur=0,
                              inpaint_editor=_editor(init, [str(layer_path)]))[1].result(timeout=120)
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    original = np.asarray(Image.open(init).convert("RGB")).astype(int)
    kept = np.ones((64, 64), dtype=bool)
    kept[8:24, 8:40] = False
    assert (out[kept] == original[kept]).all() and np.abs(out[~kept] - original[~kept]).mean() > 10
    small = tmp_path / "small.png"
    Image.new("L", (32, 32), 255).save(small)
    text = tmp_path / "text.png"
    text.write_text("no image here")
    before = _samples(server)
    for settings, message in [(dict(inpaint_editor=_editor(init)), "no mask; paint the area"),
                              (dict(inpaint_editor=_editor(init), mask_upload=handle_file(str(small))),
                               "mask is 32x32 px, the image 64x64 px"),
                              (dict(inpaint_editor=_editor(init), mask_upload=handle_file(str(text))),
                               "text.png is not an image"),
                              (dict(), "upload the image to repaint")]:
        with pytest.raises(AppError, match=message):
            _generate(client, mode="inpaint", **settings)[1].result(timeout=120)
    assert _samples(server) == before


@pytest.mark.slow
def test_inpaint_only_masked_keeps_the_init_size_and_everything_outside_the_box(client, tmp_path):
    init = _init_image(tmp_path, size=(96, 64))
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[24:40, 60:76] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    gallery, info, _ = _generate(client, mode="inpaint", compare=False, inpaint_editor=_editor(init),
                                 mask_upload=handle_file(str(mask_path)), mask_blur=0, only_masked=True,
                                 only_masked_padding=8)[1].result(timeout=120)
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    original = np.asarray(Image.open(init).convert("RGB")).astype(int)
    assert out.shape == (64, 96, 3)  # the init image's size, not width x height (64 x 64)
    assert "Inpaint area: Only masked" in info and "Masked area padding: 8" in info
    assert (out[:, :40] == original[:, :40]).all()  # far outside the padded box
    assert np.abs(out[24:40, 60:76] - original[24:40, 60:76]).mean() > 10


@pytest.mark.slow
def test_guidance_and_base_ratio_reach_the_engine_and_the_image_parameters(server, client):
    own = [ROWS[0], ROWS[1], ["#1e3cdc", "", "a blue square", "", 1.0, -1, 0.0, 0.0, 0], ROWS[3]]
    _, info, _ = _generate(client, rows=own, seed=9, steps=3, compare=False, attention_guidance=0.5,
                           base_ratio=0.0)[1].result(timeout=120)
    assert "PwW guidance: 0.5" in info and "PwW base ratio: 0.0" in info
    meta = pngmeta.read_png(_samples(server)[-1].read_bytes())
    assert "PwW guidance: 0.5" in Image.open(_samples(server)[-1]).info["parameters"]
    assert meta["settings"]["attention_guidance"] == 0.5 and meta["settings"]["base_ratio"] == 0.0


@pytest.mark.slow
def test_region_with_its_own_prompt_paints_from_the_table(server, client):
    rows = [ROWS[0], ROWS[1], ["#1e3cdc", "", "a small blue box", "", 1.0, -1, 0.0, 0.0, 0]]
    gallery, info, _ = _generate(client, rows=rows, seed=9, compare=False)[1].result(timeout=120)
    assert "PwW region prompts" in info and "a small blue box" in info
    meta = pngmeta.read_png(_samples(server)[-1].read_bytes())
    assert meta["regions"][1] == {"color": "#1e3cdc", "prompt": "a small blue box", "weight": 1.0,
                                  "seed": None, "blur": 0.0, "outside": 0.0, "occurrence": None}


@pytest.mark.slow
def test_tome_and_deepcache_fields_reach_the_image_and_bad_ones_are_a_message(server, client):
    _, info, _ = _generate(client, seed=9, steps=3, compare=False, tome=0.5, deepcache=3,
                           deepcache_branch=1)[1].result(timeout=120)
    assert "ToMe: 0.5" in info and "DeepCache: 3 (branch 1)" in info
    reopened = client.predict(handle_file(str(_samples(server)[-1])), api_name="/reopen")
    assert [reopened[events.OUT.index(k)] for k in ("tome", "deepcache", "deepcache_branch")] == [0.5, 3, 1]
    before = _samples(server)
    with pytest.raises(AppError, match=r"tome \(the merged fraction of tokens\) must be in \[0, 1\)"):
        _generate(client, tome=1.0)[1].result(timeout=120)
    assert _samples(server) == before
