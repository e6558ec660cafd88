"""`pww-webui` / scripts/webui_pww.py: load the model once, open on the demo scene, serve.

Safe defaults: binds 127.0.0.1; another host only when asked, with a warning if there is no
--auth; uploads capped at 20 MB (and 4096 x 4096 px by the handlers); models come from the
server's own list, so a client can never name a path.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..allocator import tune_malloc
from ..cli_text import add_text_flags, check_text, prepare_text
from ..paths import DEMO_CKPT, DEMO_DIR

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerUsageError(ValueError):
    """A bad command-line option of the web UI."""


def build_parser() -> argparse.ArgumentParser:
    """The web UI's command line."""
    p = argparse.ArgumentParser(description="Paint-with-Words web UI: paint a colour map, name "
                                "its colours, generate. With no --ckpt, the bundled demo model.")
    p.add_argument("--ckpt", default=None, help="SD v1 .ckpt/.safetensors (default: the demo model)")
    p.add_argument("--models-dir", default=None,
                   help="folder whose .safetensors/.ckpt files the page offers (as a list)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", default=None, help="user:password required to open the page")
    p.add_argument("--outdir", default="outputs/webui", help="where generated images are saved")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    add_text_flags(p)  # --clip-skip, --embeddings-dir, --lora, --lora-dir, as the scripts
    return p


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password)."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ServerUsageError("--auth must be user:password (both non-empty)")
    return user, password


def check_host(host: str, auth: tuple[str, str] | None) -> None:
    """Warn when the page is reachable from other machines without a password."""
    if host not in LOCAL_HOSTS and auth is None:
        warnings.warn(f"--host {host} makes the page reachable from other machines and --auth is not "
                      "set: anyone who can reach this port can generate (and fill the disk); "
                      "add --auth user:password", stacklevel=2)


def start_scene(width: int | None = None) -> dict[str, Any]:
    """The opening scene: the demo's prompt, map and regions (at `width` px square when given)."""
    demo = json.loads((DEMO_DIR / "demo.json").read_text())
    rgb = np.asarray(Image.open(DEMO_DIR / demo["color_map"]).convert("RGB"))
    size = width or rgb.shape[1] // 8 * 8
    records = [{"color": c, **dict(zip(("label", "weight"), _split(v)))}
               for c, v in demo["color_context"].items()]
    return {"prompt": demo["prompt"], "map": rgb, "regions": records,
            "sampler": _a1111_name(demo.get("sampler", "euler_a")), "steps": demo.get("steps", 30),
            "cfg_scale": demo.get("scale", 7.5), "width": size, "height": size,
            "weight_function": demo.get("weight_function", "std"),
            "weight_scale": demo.get("weight_scale", 8.0)}


def _split(value: str) -> tuple[str, float]:
    label, _, weight = value.rpartition(",")
    return (label, float(weight)) if label else (value, 1.0)


def _a1111_name(name: str) -> str:
    from ..samplers.registry import get_sampler

    return get_sampler(name).label


def create_app(ckpt: str | Path | None = None, models_dir: str | Path | None = None,
               outdir: str | Path = "outputs/webui", device: str | None = None,
               text: argparse.Namespace | None = None) -> Any:
    """Load the default model and build the page; returns the gradio Blocks (not launched).

    text: the parsed text flags (`cli_text.add_text_flags`), applied to every model loaded."""
    import pww_ldm

    from ..models.tokenizer import get_tokenizer
    from .app import build_app
    from .events import UI
    from .worker import ModelPool, Worker, find_models

    default = Path(ckpt) if ckpt is not None else DEMO_CKPT
    if not default.is_file():
        raise ServerUsageError(f"checkpoint {default} does not exist")
    if models_dir is not None and not Path(models_dir).is_dir():
        raise ServerUsageError(f"--models-dir {models_dir} is not a folder")
    def load(path: Path, **kwargs: Any) -> Any:
        model = pww_ldm.load_model(path, **kwargs)
        if text is not None:
            prepare_text(model, text)
        return model

    pool = ModelPool(find_models(models_dir, default), load, device=device)
    pool.get(pool.names[0])  # loaded once, now: the first request does not wait for it
    scene = start_scene(None if ckpt is None else 512)
    return build_app(UI(Worker(pool, outdir), scene, get_tokenizer()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pww-webui`; returns the exit status (2 on bad options)."""
    from .app import launch_kwargs

    tune_malloc()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        auth = parse_auth(args.auth)
        check_host(args.host, auth)
        check_text(args)
        app = create_app(args.ckpt, args.models_dir, args.outdir, args.device, text=args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, auth=auth, **launch_kwargs())
    return 0
