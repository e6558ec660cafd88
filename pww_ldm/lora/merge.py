"""Merging LoRAs into a model's weights, and taking them out again bit for bit.

The first LoRA that touches a weight stores a CPU copy of the original (as A1111's
`network_weights_backup`). A weight is then always rebuilt from that copy:
W = (W_orig + sum over active LoRAs of multiplier * delta) computed in float32, cast to W's dtype,
in the order the LoRAs were applied. When no active LoRA touches it any more, the copy is put
back as it is, so `remove()` of the last handle restores the exact original bits (nothing is
subtracted). There is no per-step cost: sampling sees plain weights.

The state lives in a weak map keyed by the model, so it goes away with the model. Loading other
weights into the model while LoRAs are merged is not tracked: remove the handles first.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import LoraError
from .parse import LoraFile, LoraLayer, match_lora


@dataclass
class _Merged:
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> CPU copy
    active: list[LoraHandle] = field(default_factory=list)


_STATE: weakref.WeakKeyDictionary[nn.Module, _Merged] = weakref.WeakKeyDictionary()


class LoraHandle:
    """A LoRA merged into a model with a multiplier; `remove()` takes it out again.

    Also a context manager: `with apply_lora(model, path, 0.8): ...` removes it on exit.
    """

    def __init__(self, model: nn.Module, lora: LoraFile, weight: float) -> None:
        self._model = weakref.ref(model)
        self.lora = lora
        self.weight = float(weight)
        self.active = False
        self._by_param: dict[str, list[LoraLayer]] = {}
        for layer in lora.layers:
            self._by_param.setdefault(layer.target.key, []).append(layer)

    @property
    def path(self) -> Path:
        """The LoRA file."""
        return self.lora.path

    def layers_for(self, param: str) -> list[LoraLayer]:
        """This LoRA's layers updating the parameter `param` (usually one; q, k, v share one)."""
        return self._by_param.get(param, [])

    def remove(self) -> None:
        """Unmerge this LoRA; weights no other LoRA touches get their original bits back.

        Idempotent: removing a removed handle does nothing.
        """
        model = self._model()
        if not self.active or model is None:
            self.active = False
            return
        state = _STATE[model]
        state.active.remove(self)
        self.active = False
        _rebuild(model, state, {layer.target.key for layer in self.lora.layers})

    def __enter__(self) -> LoraHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        layers = len(self.lora.layers)
        return f"LoraHandle({str(self.path)!r}, weight={self.weight}, {layers} layers, {state})"


def _rebuild(model: nn.Module, state: _Merged, params: set[str]) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            weight = named[name]
            contributions = [(h.weight, layer) for h in state.active for layer in h.layers_for(name)]
            original = state.originals[name]
            if not contributions:
                weight.copy_(original)
                del state.originals[name]
                continue
            # copy=True: a float32 CPU original would otherwise be updated in place.
            merged = original.to(device=weight.device, dtype=torch.float32, copy=True)
            for multiplier, layer in contributions:
                rows = layer.target.rows
                block = merged if rows is None else merged[rows[0]:rows[1]]
                block += multiplier * layer.delta(block.shape, weight.device)
            weight.copy_(merged.to(weight.dtype))


def check_weight(weight: float) -> None:
    """LoraError unless `weight` is a real number (not bool, not NaN)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
        raise LoraError(f"LoRA weight must be a number such as 0.8, got {weight!r}")


def merge_lora(model: nn.Module, lora: LoraFile, weight: float = 1.0) -> LoraHandle:
    """Merge an already matched `LoraFile` into `model` with multiplier `weight`; returns its handle."""
    check_weight(weight)
    state = _STATE.setdefault(model, _Merged())
    named = dict(model.named_parameters())
    params = {layer.target.key for layer in lora.layers}
    for name in params:
        if name not in state.originals:
            state.originals[name] = named[name].detach().to("cpu", copy=True)
    handle = LoraHandle(model, lora, weight)
    state.active.append(handle)
    handle.active = True
    _rebuild(model, state, params)
    return handle


def apply_lora(model: nn.Module, path: str | Path, weight: float = 1.0) -> LoraHandle:
    """Merge the LoRA file `path` into `model`'s UNet and text-encoder weights.

    model: a `LatentDiffusion` (CompVis module names). path: kohya/A1111 or diffusers/peft
    `.safetensors` (or `.pt`/`.ckpt`/`.bin`, read by the safe unpickler). weight: the multiplier
    (A1111's `<lora:name:weight>`), applied to UNet and text encoder alike. Several LoRAs may be
    active at once; each handle's `remove()` unmerges that one. Every check (file, format,
    architecture) runs before any weight changes.
    """
    check_weight(weight)
    return merge_lora(model, match_lora(model, path), weight)


def active_loras(model: nn.Module) -> list[LoraHandle]:
    """The handles merged into `model`, in the order they were applied."""
    state = _STATE.get(model)
    return list(state.active) if state is not None else []
