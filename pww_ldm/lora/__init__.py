"""LoRA: kohya/A1111 and diffusers/peft LoRA files merged into the weights, removed exactly.

    handle = pww_ldm.apply_lora(model, "models/Lora/style.safetensors", 0.8)
    ...
    handle.remove()                                   # original weights, bit for bit

    manager = LoraManager(model, lora_dir="models/Lora")
    prompt = manager.apply_prompt("a cat <lora:style:0.8>")   # -> "a cat "
    settings["Lora hashes"] = manager.hashes_text()
"""

from .errors import LoraError, LoraFormatError, LoraMismatchError, LoraNotFoundError
from .keys import layer_aliases
from .manager import LoraManager
from .merge import LoraHandle, active_loras, apply_lora, merge_lora
from .parse import LoraFile, LoraLayer, UnmatchedLoraKeysWarning, match_lora
from .tags import (
    DEFAULT_LORA_DIR,
    extract_lora_tags,
    list_loras,
    lora_hashes_text,
    lora_shorthash,
    parse_lora_arg,
    resolve_lora,
)

__all__ = [
    "DEFAULT_LORA_DIR",
    "LoraError",
    "LoraFile",
    "LoraFormatError",
    "LoraHandle",
    "LoraLayer",
    "LoraManager",
    "LoraMismatchError",
    "LoraNotFoundError",
    "UnmatchedLoraKeysWarning",
    "active_loras",
    "apply_lora",
    "extract_lora_tags",
    "layer_aliases",
    "list_loras",
    "lora_hashes_text",
    "lora_shorthash",
    "match_lora",
    "merge_lora",
    "parse_lora_arg",
    "resolve_lora",
]
