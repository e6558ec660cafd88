"""One exception type per kind of LoRA problem; every message names the file and what to do."""

from __future__ import annotations


class LoraError(ValueError):
    """Base of every LoRA problem."""


class LoraNotFoundError(LoraError, FileNotFoundError):
    """A `<lora:name>` or `--lora` file that does not exist; the message lists what was found."""


class LoraFormatError(LoraError):
    """The file is not a LoRA we can merge (no LoRA keys, an unsupported LyCORIS kind, bad tag)."""


class LoraMismatchError(LoraError):
    """The LoRA was made for another architecture (e.g. an SDXL LoRA on an SD v1 model)."""
