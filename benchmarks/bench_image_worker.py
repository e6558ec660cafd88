"""One whole image in a fresh process, timed and with its peak memory per phase.

    python benchmarks/bench_image_worker.py '{"impl": "ours", "size": 512, "steps": 20, ...}'

Called by benchmarks/bench_time_to_image.py and benchmarks/bench_memory.py. The task's keys:
impl ("ours" / "diffusers"), size (px), steps (Euler), repeats, quick (tiny configs), precision
(ours: "fp32", "bf16" or "auto" = what `--precision auto` picks here, VAE included), fast (ours:
pww_ldm.fast), approximation (ours: a name of APPROXIMATIONS), tune_malloc (default true, as the
entry points), same_start (both sides' models built in every process, see `build`). Both sides
hold the same random full-size SD v1 weights (bench_models). Memory: the kernel's high-water
mark over the first run (VmHWM, reset at its start), and resident memory sampled every 2 ms
attributed to the phase running (text encoder, UNet, VAE decoder, else "other"). Prints one
line `BENCH_RESULT {json}`.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The optional approximations timed by bench_time_to_image.py, one row each: name ->
# pww_ldm.approx.Approximations fields. The settings: ToMe merging 50 % of the tokens at
# the finest grid (tomesd's default), DeepCache refreshing the deep features every 3rd step.
APPROXIMATIONS: dict[str, dict[str, Any]] = {"tome": {"tome": 0.5}, "deepcache": {"deepcache": 3}}


class PhaseMemory:
    """Peak resident memory (MiB) per phase, from forward hooks and a 2 ms sampling thread.

    modules: {phase name: module}; a phase runs from its module's forward entry to its exit.
    """

    def __init__(self, modules: dict[str, Any]) -> None:
        self.phase = "other"
        self.peaks: dict[str, float] = {}
        self.spans: dict[str, list[float]] = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda *_, n=name: self._enter(n))
            module.register_forward_hook(lambda *_, n=name: self._exit(n))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _enter(self, name: str) -> None:
        self._record()  # what the previous phase left resident counts for it
        self.phase = name
        now = time.perf_counter()
        self.spans.setdefault(name, [now, now])

    def _exit(self, name: str) -> None:
        self._record()
        self.spans[name][1] = time.perf_counter()
        self.phase = "other"

    def _record(self) -> None:
        from bench_util import rss_mib

        rss = rss_mib()[0]
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._record()

    def reset(self) -> None:
        """Forget the peaks and spans (before a new run)."""
        self.peaks, self.spans = {}, {}

    def __enter__(self) -> PhaseMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def seconds(self) -> dict[str, float]:
        """{phase: seconds from its first start to its last end}."""
        return {name: round(end - start, 3) for name, (start, end) in self.spans.items()}


def _precision(task: dict[str, Any]) -> tuple[str, str, str]:
    """(UNet/text dtype name, VAE dtype name, note) of an ours task."""
    from pww_ldm.fast import auto_precision, auto_vae_precision

    if task.get("precision", "fp32") != "auto":
        return task.get("precision", "fp32"), "fp32", ""
    (unet, why), (vae, vae_why) = auto_precision("cpu"), auto_vae_precision("cpu")
    return unet, vae, f"{why}; {vae_why}"


def diffusers_parts(model: Any, cfg: Any) -> dict[str, Any]:
    """diffusers' UNet and VAE, transformers' CLIP text model, ours' tokenizer and schedule,
    holding `model`'s weights (the UNet and VAE share its storage: diffusers' conversion
    renames and reshapes, assign=True keeps the tensors)."""
    import torch
    from bench_models import build_diffusers
    from oracle import transformers_clip

    unet, vae = build_diffusers(model, cfg, torch.device("cpu"), torch.float32)
    clip_cfg = dict(cfg.model.params.cond_stage_config.get("params", {}).get("config") or {})
    return {"unet": unet, "vae": vae, "text": transformers_clip(model.state_dict(), clip_cfg),
            "tokenizer": model.cond_stage_model.tokenizer, "alphas": model.alphas_cumprod.clone()}


def build(task: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
    """(run: () -> image, {phase: module}, note) of the task's implementation.

    same_start: build both implementations' models in every process and keep them, so both
    sides start from the same resident memory and allocator state (else the diffusers process
    drops ours' model after converting it, and ours never builds diffusers').
    """
    import torch
    from bench_models import DTYPES, PROMPT, build_ours, diffusers_txt2img

    import pww_ldm
    from pww_ldm.approx import Approximations
    from pww_ldm.fast import enable_fast

    size, steps = task["size"], task["steps"]
    dtype, vae_dtype, note = _precision(task) if task["impl"] == "ours" else ("fp32", "fp32", "")
    model, cfg = build_ours(task["quick"], torch.device("cpu"), DTYPES[dtype])
    d = diffusers_parts(model, cfg) if task["impl"] == "diffusers" or task.get("same_start") else {}
    if task["impl"] == "diffusers":
        kept = model if task.get("same_start") else None  # else this process holds diffusers' only
        del model
        return (lambda: (kept, diffusers_txt2img(d["unet"], d["vae"], d["text"], d["tokenizer"],
                                                 d["alphas"], PROMPT, steps, size, size)),
                {"text": d["text"], "unet": d["unet"], "vae_decode": d["vae"].decoder}, "")
    model.first_stage_model.to(DTYPES[vae_dtype])
    if task.get("fast"):
        enable_fast(model)
    approx = Approximations(**APPROXIMATIONS[task["approximation"]]) if task.get("approximation") else None
    phases = {"text": model.cond_stage_model.transformer, "unet": model.model.diffusion_model,
              "vae_decode": model.first_stage_model.decoder}
    return (lambda: (d, pww_ldm.txt2img(model, PROMPT, steps=steps, sampler="euler", width=size,
                                        height=size, seed=0, progress=False, approx=approx)),
            phases, f"UNet/text {dtype}, VAE {vae_dtype}" + (f" ({note})" if note else "")
            + "".join(f", {k} {v}" for k, v in (approx.parameters() if approx else {}).items()))


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Time `repeats` whole images; the first run's peak memory, overall and per phase."""
    import pww_ldm.allocator

    if task.get("tune_malloc", True):  # as the entry points do
        pww_ldm.allocator.tune_malloc()
    import torch
    from bench_util import PeakRSS, malloc_trim

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    run, modules, note = build(task)
    gc.collect()
    malloc_trim()
    times, phases, memory = [], [], None
    with torch.inference_mode(), PhaseMemory(modules) as phase_memory:
        for i in range(task["repeats"]):
            phase_memory.reset()
            with PeakRSS() as rss:
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            phases.append(phase_memory.seconds())
            if i == 0:
                memory = {"rss_peak_mib": rss.peak_mib, "rss_start_mib": rss.start_mib,
                          "rss_method": rss.method, "phase_peak_mib": dict(phase_memory.peaks)}
    return {"times_s": times, "phases_s": phases, **(memory or {}), "note": note,
            "loadavg": list(os.getloadavg())}


def run_image_worker(task: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run this module on `task` in a fresh Python; returns its result dict.

    A fresh process per configuration keeps peak-memory readings apart and gives every
    configuration the same cold start. Raises RuntimeError with the stderr tail on failure.
    """
    from bench_util import MARKER

    proc = subprocess.run([sys.executable, __file__, json.dumps(task)], capture_output=True,
                          text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"image worker {task} failed (exit {proc.returncode}):\n"
                       + (proc.stderr or proc.stdout)[-3000:])


def main() -> None:
    """Run the task given as a JSON argument and print its result line."""
    from bench_util import MARKER

    print(MARKER + json.dumps(run_task(json.loads(sys.argv[1]))), flush=True)


if __name__ == "__main__":
    main()
