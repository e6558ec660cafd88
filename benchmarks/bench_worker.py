"""One benchmark configuration in a fresh process (called by benchmarks/bench.py).

    python benchmarks/bench_worker.py '{"task": "txt2img", "impl": "ours", ...}'

Tasks: "unet_step" (the allocator comparison: mallopt is process-wide) and "txt2img" (peak
memory of one whole generation, which must not mix with other configurations). The result is
printed as one line `BENCH_RESULT {json}`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any


def _import_pww_ldm(malloc_tuning: bool) -> bool:
    """Import pww_ldm and tune glibc malloc as the entry points do, or keep glibc's defaults
    (importing pww_ldm changes nothing); True when tuning is active."""
    import pww_ldm.allocator

    return pww_ldm.allocator.tune_malloc() if malloc_tuning else False


def unet_step(task: dict[str, Any]) -> dict[str, Any]:
    """Median time of one full UNet step (PwW off) in this process's malloc setting."""
    tuned = _import_pww_ldm(task["malloc_tuning"])
    import torch
    from bench_models import DTYPES, build_unet_only
    from bench_util import time_fn

    device, dtype = torch.device(task["device"]), DTYPES[task["dtype"]]
    unet = build_unet_only(task["quick"], device, dtype)
    latent = task["latent"]
    ctx_dim = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    t = torch.full((2,), 500.0, device=device)
    emb = torch.randn(2, 77, ctx_dim, generator=g).to(device, dtype)
    times, gflop, _ = time_fn(lambda: unet(x, t, context=emb), device, task["repeats"],
                              task["warmup"])
    return {"times": times, "gflop": gflop, "malloc_tuned": tuned}


class PhaseTimer:
    """Wall-clock span of each phase (text encoder, UNet, VAE decoder) from module hooks.

    A phase runs from the first forward entry of its module to the last forward exit, so the
    tiles of a tiled decode or the steps of a sampler count as one span. Synchronises CUDA.
    """

    def __init__(self, modules: dict[str, Any], device: Any) -> None:
        self.spans: dict[str, list[float]] = {}
        self.device = device
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda *_, n=name: self._mark(n, 0))
            module.register_forward_hook(lambda *_, n=name: self._mark(n, 1))

    def _mark(self, name: str, end: int) -> None:
        from bench_util import sync

        sync(self.device)
        now = time.perf_counter()
        span = self.spans.setdefault(name, [now, now])
        if end:
            span[1] = now

    def seconds(self) -> dict[str, float]:
        """{phase: seconds from its first start to its last end}."""
        return {name: round(end - start, 4) for name, (start, end) in self.spans.items()}


def txt2img(task: dict[str, Any]) -> dict[str, Any]:
    """Time and peak memory of one whole txt2img (text encoding, steps, decode)."""
    _import_pww_ldm(True)
    import torch
    from bench_models import DTYPES, PROMPT, build_diffusers, build_ours, diffusers_txt2img
    from bench_util import PeakRSS, malloc_trim, sync

    import pww_ldm

    device, dtype = torch.device(task["device"]), DTYPES[task["dtype"]]
    size, steps = task["size"], task["steps"]
    model, cfg = build_ours(task["quick"], device, dtype)
    if task["impl"] == "ours":
        phases = {"text": model.cond_stage_model, "unet": model.model.diffusion_model,
                  "vae_decode": model.first_stage_model.decoder}

        def run() -> Any:
            return pww_ldm.txt2img(model, PROMPT, steps=steps, sampler="euler", width=size,
                                   height=size, seed=0, progress=False)
    else:
        from oracle import transformers_clip

        unet, vae = build_diffusers(model, cfg, device, dtype)
        clip_cfg = dict(cfg.model.params.cond_stage_config.get("params", {}).get("config") or {})
        text = transformers_clip(model.state_dict(), clip_cfg).to(device, dtype)
        tokenizer, alphas = model.cond_stage_model.tokenizer, model.alphas_cumprod.clone()
        del model  # the diffusers process holds diffusers/transformers models only
        gc.collect()
        phases = {"text": text, "unet": unet, "vae_decode": vae.decoder}

        def run() -> Any:
            return diffusers_txt2img(unet, vae, text, tokenizer, alphas, PROMPT, steps, size, size)

    warm = device.type == "cuda"
    if warm:  # CUDA: one untimed run first (lazy module loading, cuDNN plans), then measure
        with torch.inference_mode():
            run()
    timer = PhaseTimer(phases, device)
    gc.collect()
    malloc_trim()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), PeakRSS() as rss:
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        elapsed = time.perf_counter() - start
    out = {"time_s": elapsed, "rss_peak_mib": rss.peak_mib, "rss_start_mib": rss.start_mib,
           "rss_method": rss.method, "phases_s": timer.seconds(), "warm": warm}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main() -> None:
    """Run the task given as a JSON argument and print its result line."""
    from bench_util import MARKER

    task = json.loads(sys.argv[1])
    result = {"unet_step": unet_step, "txt2img": txt2img}[task["task"]](task)
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
