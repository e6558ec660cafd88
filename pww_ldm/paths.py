"""Where the bundled files and the default checkpoints are, for every entry point.

Standard library only (no torch), so any front end can import it first and cheaply. The demo
model and the examples sit beside the package in a clone or an editable install; a wheel does
not carry them, which `resolve_checkpoint` says in its error.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "models" / "pww-demo"
DEMO_CKPT = DEMO_DIR / "model.safetensors"
SD_CKPT = REPO_ROOT / "models" / "ldm" / "stable-diffusion-v1" / "model.ckpt"
EXAMPLE_MAP = REPO_ROOT / "examples" / "cat_dog.png"
EXAMPLE_CONTEXT = REPO_ROOT / "examples" / "cat_dog.json"
EXAMPLE_PROMPT = "realistic photo of a dog, cat, tree, with beautiful sky, on sandy ground"


def _not_found(message: str) -> Exception:
    from .checkpoint import CheckpointNotFoundError  # imports torch: only on the error path

    return CheckpointNotFoundError(message)


def resolve_checkpoint(ckpt: str | None) -> str:
    """The checkpoint to load: `ckpt`, else the bundled demo model, else CompVis's SD v1 path.

    Raises CheckpointNotFoundError (a FileNotFoundError) naming what to pass when that file does
    not exist, so the front ends fail before any model code runs.
    """
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise _not_found(
                f"checkpoint {ckpt} does not exist: pass --ckpt with the path of an SD v1 "
                ".ckpt or .safetensors file")
        return str(ckpt)
    for default in (DEMO_CKPT, SD_CKPT):
        if default.is_file():
            return str(default)
    raise _not_found(
        f"no --ckpt given and no default checkpoint: the bundled demo model {DEMO_CKPT} is not "
        f"here (a non-editable install does not carry it) and {SD_CKPT} does not exist; pass "
        "--ckpt path/to/model.ckpt (an SD v1 .ckpt or .safetensors)")
