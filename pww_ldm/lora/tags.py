"""A1111's `<lora:name:weight>` prompt tags, the LoRA folder, `--lora file:weight`, `Lora hashes`.

A1111 (modules/extra_networks.py) finds extra networks with `<(\\w+):([^>]+)>` and removes each
tag from the prompt, leaving the text around it as it was; `lyco` is an alias of `lora`. Its
LoRA folder holds `.safetensors`, `.ckpt` and `.pt` files (subfolders too), named by file name
without the extension. Other `<type:...>` tags (hypernetworks) are left in the prompt.

`Lora hashes` (extensions-builtin/Lora/extra_networks_lora.py): `name: hash, name: hash` where
name is the name written in the prompt with `:` and `,` removed, and hash the first 12 hex digits
(`network.shorthash`) of A1111's `hashes.sha256(..., use_addnet_hash=True)` for .safetensors:
the sha256 of the tensor data after the safetensors header (kohya / additional-networks hash);
of the whole file for other formats.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import LoraFormatError, LoraNotFoundError

DEFAULT_LORA_DIR = Path("models") / "Lora"
FOLDER_SUFFIXES = (".safetensors", ".ckpt", ".pt")  # what A1111 lists in its Lora folder
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net
_LORA_TYPES = ("lora", "lyco")
_BLOCK = 1 << 20

_hash_cache: dict[tuple[str, int, int], str] = {}


def _weight(text: str, tag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LoraFormatError(f"{tag}: weight {text!r} is not a number; write e.g. <lora:name:0.8>") from None


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(prompt with the `<lora:...>` tags removed, [(name, weight), ...] in prompt order).

    `<lora:name>` has weight 1.0, `<lora:name:0.7>` 0.7. A1111's separate text-encoder / UNet
    weights (`<lora:name:0.5:1>`, `te=`, `unet=`, `dyn=`) are refused with LoraFormatError.
    """
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        if match.group(1) not in _LORA_TYPES:
            return match.group(0)
        tag, items = match.group(0), match.group(2).split(":")
        if len(items) > 2 or any("=" in item for item in items):
            raise LoraFormatError(f"{tag}: only <lora:name> and <lora:name:weight> are supported "
                                  "(no separate text-encoder/UNet weights)")
        name = items[0].strip()
        if not name:
            raise LoraFormatError(f"{tag}: no LoRA name; write <lora:name:weight>")
        found.append((name, _weight(items[1].strip(), tag) if len(items) == 2 else 1.0))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`--lora FILE[:WEIGHT]` -> (path, weight); a trailing `:number` is the weight (default 1).

    Only a suffix that parses as a number counts, so Windows paths (`C:\\x.safetensors`) work.
    """
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def list_loras(folder: str | Path = DEFAULT_LORA_DIR) -> dict[str, list[Path]]:
    """{name: [files]} of the LoRA files under `folder` (recursive), name = file name w/o suffix."""
    found: dict[str, list[Path]] = {}
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in FOLDER_SUFFIXES and path.is_file():
                found.setdefault(path.stem, []).append(path)
    return found


def _output_name(path: Path) -> str | None:
    # kohya's `ss_output_name` in the safetensors header: A1111's alias of a LoRA.
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("ss_output_name")
    except (SafetensorError, OSError):
        return None  # an unreadable file is reported when it is loaded, not while searching


def resolve_lora(name: str, folder: str | Path = DEFAULT_LORA_DIR) -> Path:
    """The file of `<lora:name>` in `folder`; LoraNotFoundError naming the folder and its LoRAs.

    `name` is a file name without extension (case-insensitive when no exact match), else, as
    A1111's alias, the `ss_output_name` a kohya .safetensors file carries in its metadata.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LoraNotFoundError(
            f"<lora:{name}>: the LoRA folder {folder} does not exist; create it and put "
            f"{name}.safetensors there, or pass --lora-dir")
    files = list_loras(folder)
    paths = files.get(name) or [p for n, ps in files.items() if n.lower() == name.lower() for p in ps]
    if not paths:
        paths = [p for ps in files.values() for p in ps if _output_name(p) == name]
    if not paths:
        names = ", ".join(sorted(files)) or "none"
        raise LoraNotFoundError(f"<lora:{name}>: no LoRA named {name!r} in {folder} (found: {names})")
    if len(paths) > 1:
        raise LoraNotFoundError(f"<lora:{name}>: several files in {folder} have that name "
                                f"({', '.join(map(str, paths))}); rename one")
    return paths[0]


def lora_shorthash(path: str | Path) -> str:
    """A1111's 12-digit LoRA hash: sha256 of the tensor data (.safetensors) or of the file."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            if path.suffix.lower() == ".safetensors":
                f.seek(8 + int.from_bytes(f.read(8), "little"))  # skip the JSON header
            for block in iter(lambda: f.read(_BLOCK), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key][:12]


def lora_hashes_text(loras: Iterable[tuple[str, str | Path]]) -> str | None:
    """The `Lora hashes` value for [(name as written in the prompt, file)], or None if empty.

    E.g. "style: 0123456789ab, detail: ba9876543210"; the infotext writer quotes it (it holds
    `:` and `,`), giving A1111's `Lora hashes: "style: 0123456789ab, ..."`.
    """
    items = [f"{name.replace(':', '').replace(',', '')}: {lora_shorthash(path)}" for name, path in loras]
    return ", ".join(items) if items else None
