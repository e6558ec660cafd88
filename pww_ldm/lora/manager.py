"""Keeping a model's merged LoRAs equal to what the current prompt asks for.

A front end makes one `LoraManager` per model and calls `apply_prompt(prompt)` before encoding
each prompt. When the prompt's set of (file, weight) differs from what is merged, every merged
LoRA is removed (the weights get their original bits back) and the new set is merged in prompt
order; so a given set always gives the same weights whatever came before. Every file is found,
read and checked before any weight changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .errors import LoraNotFoundError
from .merge import LoraHandle, check_weight, merge_lora
from .parse import match_lora
from .tags import DEFAULT_LORA_DIR, extract_lora_tags, lora_hashes_text, resolve_lora


def _stat(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


class LoraManager:
    """The LoRAs of `model`: fixed ones (`--lora file:weight`) plus those of the current prompt.

    lora_dir: where `<lora:name>` files are looked up (A1111's `--lora-dir`, default models/Lora,
    relative to the working directory). fixed: [(file, weight)] merged for every prompt, first.
    """

    def __init__(self, model: nn.Module, lora_dir: str | Path = DEFAULT_LORA_DIR,
                 fixed: Sequence[tuple[str | Path, float]] = ()) -> None:
        self.model = model
        self.lora_dir = Path(lora_dir)
        self.fixed = [(Path(p).stem, Path(p), float(w)) for p, w in fixed]
        self._handles: list[tuple[str, LoraHandle]] = []
        self._keys: list[tuple[str, tuple[str, int, int], float]] = []  # (name, file stat, weight)

    @property
    def applied(self) -> list[tuple[str, Path, float]]:
        """[(name, file, weight)] merged now, in the order they were merged."""
        return [(name, h.path, h.weight) for name, h in self._handles]

    def apply_prompt(self, prompt: str) -> str:
        """Merge what `prompt`'s `<lora:name:w>` tags (plus the fixed LoRAs) ask; return the prompt
        without the tags. Unknown names raise LoraNotFoundError naming the folder and its LoRAs."""
        text, tags = extract_lora_tags(prompt)
        wanted = self.fixed + [(name, resolve_lora(name, self.lora_dir), w) for name, w in tags]
        self.set(wanted)
        return text

    def apply_prompts(self, prompts: Sequence[str]) -> list[str]:
        """A batch, as A1111's `parse_prompts`: the first prompt's tags are merged for the whole
        batch, and the tags are removed from every prompt. Returns the prompts without tags."""
        texts = [extract_lora_tags(p)[0] for p in prompts[1:]]
        return [self.apply_prompt(prompts[0]), *texts] if prompts else []

    def set(self, wanted: Sequence[tuple[str, str | Path, float]]) -> None:
        """Make [(name, file, weight)] exactly the merged set, in this order (no-op if it already is)."""
        for _, _, w in wanted:
            check_weight(w)
        wanted = [(name, Path(path), float(w)) for name, path, w in wanted]
        for _, path, _ in wanted:
            if not path.is_file():
                raise LoraNotFoundError(f"LoRA file {path} does not exist; pass an existing file")
        keys = [(name, _stat(path), w) for name, path, w in wanted]
        if keys == self._keys:
            return
        cached = {key[1]: h.lora for key, (_, h) in zip(self._keys, self._handles)}
        # Read and check every file before changing any weight.
        files = [cached.get(key[1]) or match_lora(self.model, path)
                 for key, (_, path, _) in zip(keys, wanted)]
        self.clear()
        for (name, _, weight), lora in zip(wanted, files):
            self._handles.append((name, merge_lora(self.model, lora, weight)))
        self._keys = keys

    def clear(self) -> None:
        """Unmerge every LoRA this manager merged (the weights get their original bits back)."""
        for _, handle in reversed(self._handles):
            handle.remove()
        self._handles, self._keys = [], []

    def hashes_text(self) -> str | None:
        """The `Lora hashes` infotext value of the merged LoRAs (None when there are none)."""
        return lora_hashes_text((name, h.path) for name, h in self._handles)
