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

`--precision auto`: bf16 on CPUs that have native bf16 instructions (AVX512-BF16 or AMX-BF16)
for each part whose bf16 measurement on the demo model meets the criterion (the demo image >= 35
dB PSNR from fp32, every region-benchmark condition's mean IoU within 0.02): the UNet and text
encoder (`auto_precision`) and the VAE (`auto_vae_precision`), both measured to pass
(BF16_UNET, BF16_VAE). Else fp32 on the CPU; CUDA: fp16, the VAE fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .models.latent_diffusion import LatentDiffusion

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_PSNR_DB = 35.0     # the demo image in bf16 against fp32
BF16_MAX_IOU_CHANGE = 0.02  # the region benchmark's mean IoU, every condition
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


def precision_passes(psnr_db: float, max_abs_d_iou: float) -> bool:
    """Whether bf16 keeps the demo image (>= BF16_MIN_PSNR_DB from fp32) and the region
    benchmark (every condition's mean IoU within BF16_MAX_IOU_CHANGE of fp32's)."""
    return psnr_db >= BF16_MIN_PSNR_DB and abs(max_abs_d_iou) < BF16_MAX_IOU_CHANGE


@dataclass(frozen=True)
class Bf16Evidence:
    """bf16 against fp32 on the demo model, as benchmarks/bench_precision.py measures it.

    psnr_db: the demo image's PSNR from the fp32 one; max_abs_d_iou: the largest change of a
    region-benchmark condition's mean IoU. `source`: where the numbers are recorded.
    """

    part: str
    psnr_db: float
    max_abs_d_iou: float
    source: str = "benchmarks/results/precision_auto_cpu.json"

    @property
    def passes(self) -> bool:
        """Whether these numbers meet the bf16 criterion (precision_passes)."""
        return precision_passes(self.psnr_db, self.max_abs_d_iou)

    def describe(self) -> str:
        """'UNet + text encoder in bf16: demo image 37.7 dB from fp32, region IoU moved <= 0.0031
        (benchmarks/results/...)' for the run's output."""
        return (f"{self.part} in bf16: demo image {self.psnr_db:.1f} dB from fp32, region IoU moved "
                f"<= {self.max_abs_d_iou:.4f} ({self.source})")


# Measured by `python benchmarks/bench_precision.py --n 12` (benchmarks/results/
# precision_auto_cpu.json: the demo scene, 12 region-benchmark layouts x 6 conditions). The VAE's
# numbers are the VAE alone (fp32's latents decoded in bf16); both in bf16 measured 37.6 dB,
# |dIoU| <= 0.0033. Whether bf16 is good enough comes from these numbers; whether it is fast,
# from the CPU's flags (emulated bf16 is slower than fp32).
BF16_UNET = Bf16Evidence("UNet + text encoder", psnr_db=37.7, max_abs_d_iou=0.0031)
BF16_VAE = Bf16Evidence("VAE", psnr_db=53.1, max_abs_d_iou=0.0002)


def _native_bf16(flags: Iterable[str] | None) -> list[str]:
    return sorted(set(cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))


def auto_precision(device: torch.device | str, flags: Iterable[str] | None = None,
                   evidence: Bf16Evidence = BF16_UNET) -> tuple[str, str]:
    """(precision name, reason) of the UNet and text encoder that `--precision auto` picks.

    flags: the CPU's feature flags (default: read from /proc/cpuinfo); a parameter so the
    decision can be tested for any CPU. CUDA: fp16. CPU: bf16 where AVX512-BF16 or AMX-BF16 runs
    bf16 natively and `evidence` (the demo-model measurement) meets the criterion, else fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16", "CUDA: fp16"
    if device.type != "cpu":
        return "fp32", f"{device.type}: fp32"
    found = _native_bf16(flags)
    if not found:
        return "fp32", "CPU lacks native bf16 (no avx512_bf16 / amx_bf16): fp32"
    if not evidence.passes:
        return "fp32", f"CPU has native bf16 ({', '.join(found)}) but {evidence.describe()}: fp32"
    return "bf16", f"CPU has native bf16 ({', '.join(found)}) and {evidence.describe()}: bf16"


def auto_vae_precision(device: torch.device | str, flags: Iterable[str] | None = None,
                       evidence: Bf16Evidence = BF16_VAE) -> tuple[str, str]:
    """(precision name, reason) of the VAE under `--precision auto`.

    CPU: bf16 on the same terms as `auto_precision` (native bf16, `evidence` meets the
    criterion), else fp32. Elsewhere fp32: fp16 SD VAEs can decode to NaN, and bf16 was not
    measured there.
    """
    device = torch.device(device)
    if device.type != "cpu":
        return "fp32", f"{device.type}: VAE fp32"
    if not _native_bf16(flags):
        return "fp32", "CPU lacks native bf16 (no avx512_bf16 / amx_bf16): VAE fp32"
    verdict = "bf16" if evidence.passes else "fp32"
    return verdict, f"{evidence.describe()}: VAE {verdict}"


def auto_dtypes(device: torch.device | str) -> tuple[str, str, str]:
    """(UNet + text encoder precision, VAE precision, the two reasons as the lines a run prints)
    that `--precision auto` picks on `device`."""
    (unet, why), (vae, vae_why) = auto_precision(device), auto_vae_precision(device)
    return unet, vae, f"--precision auto: {why}\n--precision auto: {vae_why}"


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
