"""The PNG `parameters` text in the AUTOMATIC1111 web UI's format, written and read back.

Layout (A1111's infotext): the prompt (may span lines), then `Negative prompt: ...` when there
is one, then one line `Key: value, Key: value, ...`. A1111 reads that last line with the regex
`RE_PARAM` below, which stops an unquoted value at the first comma; so, as A1111's own `quote`
does, a value holding `,`, `:` or a newline is written as a JSON string, and read back with
json.loads. The model is named the A1111 way: `Model hash` = first 10 hex digits of the
checkpoint file's sha256, `Model` = its file name without the extension.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A1111's re_param (modules/infotext_utils.py), unchanged: `Key: value` pairs of the last line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY = re.compile(r"\w[\w \-/]*[\w\-/]")  # RE_PARAM's key without the spaces it would swallow
NEGATIVE = "Negative prompt:"
HASH_BLOCK = 1 << 20

# (resolved path, size, mtime_ns) -> sha256 hex: a 4 GB checkpoint is read once per process.
_sha256_cache: dict[tuple[str, int, int], str] = {}


def quote(value: Any) -> str:
    """A value as text that A1111's parser gives back unchanged.

    As A1111's `quote`: JSON-quoted when it holds `,` `:` or a newline. Also quoted where A1111's
    parser would change it: other control characters, empty (dropped), leading/trailing
    whitespace (stripped), or a leading double quote (its `unquote` would remove it).
    """
    text = str(value)
    if (any(c in ",:\n" or c < " " for c in text) or not text or text != text.strip()
            or text.startswith('"')):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """A1111's `unquote`: a JSON string back to its text; anything else as it is."""
    if not text or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)  # JSON text that starts and ends with '"' is a string
    except ValueError:
        return text


def format_parameters(prompt: str, negative_prompt: str, settings: Mapping[str, Any]) -> str:
    """The `parameters` text: prompt, `Negative prompt:` line if non-empty, `Key: value, ...`.

    Settings whose value is None are left out; values are written with `str` and `quote`d.
    A1111 reads the last line as settings only when it holds at least 3 pairs.
    Keys must be names A1111 reads (letters, digits, `_`, spaces, `-`, `/`; starting with a
    letter or digit), else ValueError.
    """
    for key in settings:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"setting name {key!r}: A1111 reads only names of 2 or more letters, "
                             "digits, '_', spaces, '-' or '/', starting with a letter or digit, "
                             "not ending with a space")
    line = ", ".join(f"{k}: {quote(v)}" for k, v in settings.items() if v is not None)
    negative = f"\n{NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def parse_parameters(text: str) -> dict[str, str]:
    """Read a `parameters` text as A1111's parse_generation_parameters does.

    Returns {"Prompt": ..., "Negative prompt": ..., key: value, ...} with every value a string,
    JSON-quoted values unquoted. Unlike A1111, `Size: 512x512` stays one entry (A1111 splits it
    into Size-1 / Size-2 for its UI fields) and no web-UI defaults are added.
    """
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:  # A1111's rule: fewer pairs means it is prompt text
        lines.append(last)
        last = ""
    prompt = negative = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE):
            done_with_prompt = True
            line = line[len(NEGATIVE):].strip()
        # A1111 joins with a newline only after non-empty text; kept so both read alike.
        if done_with_prompt:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in RE_PARAM.findall(last):
        if value:  # A1111 drops a key with an empty value (its v[0] raises)
            result[key] = unquote(value)
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def short_hash(path: str | os.PathLike) -> str:
    """A1111's model hash: the first 10 hex digits of the file's sha256.

    Cached per (resolved path, size, mtime), so a checkpoint is read once per process and a
    file rewritten in place is hashed again.
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    if key not in _sha256_cache:
        _sha256_cache[key] = _sha256(resolved)
    return _sha256_cache[key][:10]


def model_settings(model: Any) -> dict[str, str]:
    """{"Model hash", "Model"} of the checkpoint `load_model` read `model` from, then, when a
    separate VAE was loaded, {"VAE hash", "VAE"} (A1111's keys: its hash the same way, its name
    the file name with the extension, as A1111 writes it).

    Reads the `checkpoint_path` / `vae_path` attributes load_model sets; {} for a model built in
    code or one whose file is gone.
    """
    path = getattr(model, "checkpoint_path", None)
    if path is None or not Path(path).is_file():
        return {}
    settings = {"Model hash": short_hash(path), "Model": Path(path).stem}
    vae = getattr(model, "vae_path", None)
    if vae is not None and Path(vae).is_file():
        settings.update({"VAE hash": short_hash(vae), "VAE": Path(vae).name})
    return settings
