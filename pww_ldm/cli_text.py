"""The scripts' text flags: clip skip, textual-inversion embeddings, LoRA.

`add_text_flags` adds them to a parser; `check_text` runs every check that needs no model (folders
exist, each `<lora:name>` of the prompt and each `--lora` file is found) before the checkpoint
loads; `prepare_text` applies them to the loaded model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .lora import DEFAULT_LORA_DIR, LoraManager, extract_lora_tags, parse_lora_arg, resolve_lora
from .models.embeddings import EmbeddingError, embedding_files, load_embeddings
from .user_errors import UsageError

DEFAULT_EMBEDDINGS = Path("embeddings")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_text_flags(p: argparse.ArgumentParser) -> None:
    """--clip-skip, --embeddings-dir, --lora (repeatable), --lora-dir."""
    p.add_argument("--clip-skip", type=positive_int, default=None,
                   help="A1111's clip skip: 1 = the text encoder's last layer (default), 2 = the "
                        "penultimate layer then the final layer norm, ...")
    p.add_argument("--embeddings-dir", type=str, default=None,
                   help=f"textual-inversion embeddings (.pt/.bin/.safetensors), used by file name "
                        f"in the prompt (default: {DEFAULT_EMBEDDINGS}/ when it exists)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="a LoRA merged for every image (repeatable); <lora:name:weight> in the "
                        "prompt takes one from --lora-dir")
    p.add_argument("--lora-dir", type=str, default=str(DEFAULT_LORA_DIR),
                   help=f"where <lora:name> files are looked up (default {DEFAULT_LORA_DIR})")


def embeddings_dir(args: argparse.Namespace) -> Path | None:
    """The embeddings folder to load: --embeddings-dir (must exist), else embeddings/ if present."""
    if args.embeddings_dir is not None:
        if not Path(args.embeddings_dir).exists():
            raise UsageError(f"--embeddings-dir {args.embeddings_dir} does not exist: pass a folder "
                             "or file of textual-inversion embeddings, or leave the flag out")
        return Path(args.embeddings_dir)
    return DEFAULT_EMBEDDINGS if DEFAULT_EMBEDDINGS.is_dir() else None


def _fixed_loras(args: argparse.Namespace) -> list[tuple[Path, float]]:
    fixed = [parse_lora_arg(text) for text in args.lora]
    for path, _ in fixed:
        if not path.is_file():
            raise UsageError(f"--lora {path}: no such file; pass a LoRA .safetensors/.pt file")
    return fixed


def check_text(args: argparse.Namespace) -> set[str]:
    """The checks that need no model; returns the names of the embeddings the run will load.

    Raises UsageError for a missing folder or file, LoraNotFoundError for a `<lora:name>` of the
    prompt that is not in --lora-dir.
    """
    _fixed_loras(args)
    for name, _ in extract_lora_tags(getattr(args, "prompt", None) or "")[1]:
        resolve_lora(name, args.lora_dir)
    folder = embeddings_dir(args)
    if folder is None:
        return set()
    try:
        return {path.stem for path in embedding_files(folder)}
    except EmbeddingError as exc:
        raise UsageError(str(exc)) from None


def prepare_text(model: Any, args: argparse.Namespace) -> None:
    """Clip skip, textual-inversion embeddings and the LoRA manager on the loaded model."""
    if args.clip_skip is not None:
        try:
            model.clip_skip = args.clip_skip
        except ValueError as exc:
            raise UsageError(f"--clip-skip: {exc}") from None
    folder = embeddings_dir(args)
    if folder is not None:
        try:
            load_embeddings(model, folder)
        except EmbeddingError as exc:
            raise UsageError(str(exc)) from None
    if args.lora or Path(args.lora_dir) != DEFAULT_LORA_DIR:  # else the pipeline's default manager
        model.lora_manager = LoraManager(model, lora_dir=args.lora_dir, fixed=_fixed_loras(args))
