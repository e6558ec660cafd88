"""The opt-in fast path (`load_model(..., fast=True)`, `--fast`) and `--precision auto`.

Fast path: the UNet is compiled by inductor with weight freezing. Freezing treats the weights as
constants, so linear and convolution weights are packed once into MKL's / oneDNN's layouts rather
than on every call, and inductor fuses the elementwise work around them (GroupNorm + SiLU, GEGLU,
residual adds). The model computes the same function (the tests hold it to 1e-3 of the eager
path, Paint-with-Words on), but the first call at each image size compiles for minutes (8 to 26
min for the full-size UNet on a shared 2-core CPU), which is why it is a switch and not the
default; on that CPU (Zen 4) the compiled step measured 1.02x the eager one (benchmarks/results/
cpu_fp32_fast.json): the step is library convolutions, GEMMs and attention already.
The weights are frozen at that first call: when they change afterwards (the prompt's LoRAs
change), `refreeze` drops the compiled code so that the next call compiles with the new weights.
The VAE decoder stays eager: on the CPU its time is convolutions, which
freezing does not speed up (measured 1.01x for its 128-channel 3x3 conv at 512 px).

`--precision auto`: bf16 for the UNet and the text encoder on CPUs that have native bf16
instructions (AVX512-BF16 or AMX-BF16), else fp32 on the CPU and fp16 on CUDA. The VAE stays fp32.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .models.latent_diffusion import LatentDiffusion

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Inductor options of the fast path: freezing folds the weights into the graph as constants and
# lets inductor prepack them for oneDNN / MKL.
INDUCTOR_OPTIONS = {"freezing": True}


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (/proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_precision(device: torch.device | str, flags: Iterable[str] | None = None
                   ) -> tuple[str, str]:
    """(precision name, reason) that `--precision auto` picks on `device`.

    flags: the CPU's feature flags (default: read from /proc/cpuinfo); a parameter so the
    decision can be tested for any CPU. CUDA: fp16. CPU: bf16 where AVX512-BF16 or AMX-BF16 runs
    bf16 natively (emulated bf16 is slower than fp32), else fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16", "CUDA: fp16"
    if device.type != "cpu":
        return "fp32", f"{device.type}: fp32"
    found = sorted(set(cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))
    if found:
        return "bf16", f"CPU has native bf16 ({', '.join(found)}): bf16"
    return "fp32", "CPU lacks native bf16 (no avx512_bf16 / amx_bf16): fp32"


def enable_fast(model: LatentDiffusion) -> LatentDiffusion:
    """Compile `model`'s UNet in place with inductor weight freezing; returns the model.

    Module keys and the state_dict are unchanged (`nn.Module.compile`). Freezing takes effect
    under torch.no_grad / inference_mode, which is how the pipeline runs; a call with gradients
    runs the compiled graph without freezing. Idempotent.
    """
    model.model.diffusion_model.compile(options=INDUCTOR_OPTIONS)
    model.fast = True
    return model


def disable_fast(model: LatentDiffusion) -> LatentDiffusion:
    """Undo `enable_fast`: the UNet runs eagerly again (its compiled code is dropped); returns
    the model."""
    model.model.diffusion_model._compiled_call_impl = None  # set by nn.Module.compile; no public undo
    model.fast = False
    return model


def refreeze(model: LatentDiffusion) -> LatentDiffusion:
    """After the UNet's weights changed (a LoRA merged or removed): drop every compiled graph, whose
    frozen constants are the old weights, so the next call compiles anew; returns the model."""
    torch._dynamo.reset()  # the graphs guard on tensor metadata, not values: they would be reused
    return enable_fast(disable_fast(model))


def is_fast(model: torch.nn.Module) -> bool:
    """Whether `enable_fast` was applied to `model`."""
    return bool(getattr(model, "fast", False))
