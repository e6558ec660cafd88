"""Step cost of the region features (issue 17): one CFG UNet call with each option on vs off.

    python benchmarks/bench_features.py                 # full-size SD v1 UNet, 512 px, CPU fp32
    python benchmarks/bench_features.py --quick         # tiny config, a smoke run

The full-size UNet has random weights (benchmarks/bench_models.py), the five-region map of
bench.py and Paint-with-Words on. Variants, timed interleaved repeat by repeat:
plain (no plug-in: the fused kernel everywhere), PwW, PwW + attention maps, PwW + DenseDiffusion
self-attention (a step inside its window, the first 30 % of the steps; outside it the step is
plain PwW; also on the explicit N x N path that the layer takes for plug-ins without
`augment_qk`, for the gain of the augmented fused path), PwW + dense cross, PwW + one
own-prompt region (one more 77-token chunk), and maps
without PwW (the observer alone forces the explicit path on the conditional rows). The per-step
overhead of self-attention averaged over a whole sampling run is 0.3 x its in-window overhead.
Writes benchmarks/results/features_<device>_<dtype>.json (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import median
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_models import DTYPES, build_ours, region_context, unet_inputs  # noqa: E402
from bench_util import machine_info, time_interleaved, write_json_atomic  # noqa: E402

from pww_ldm.conditioning import UNetContext  # noqa: E402
from pww_ldm.region import PaintWithWords  # noqa: E402
from pww_ldm.region.attention_maps import AttentionMaps, region_groups  # noqa: E402
from pww_ldm.region.region_prompts import PromptRegion, RegionPrompts  # noqa: E402
from pww_ldm.region.self_attention import DenseCrossAttention, DenseSelfAttention  # noqa: E402
from pww_ldm.region.timing import StepClock  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class ScoresPath:
    """A plug-in as the layer sees it without `augment_qk`: forces the explicit N x N path."""

    def __init__(self, plugin: Any) -> None:
        self.plugin, self.acts_on = plugin, plugin.acts_on

    def hooks(self, kind: str) -> tuple[bool, bool]:
        return self.plugin.hooks(kind)

    def modify_scores(self, scores: torch.Tensor, call: Any) -> torch.Tensor:
        return self.plugin.modify_scores(scores, call)

    def observe(self, probs: torch.Tensor, call: Any) -> None:
        self.plugin.observe(probs, call)


def variants(model: Any, size: int) -> tuple[dict[str, tuple[tuple, torch.Tensor]], dict]:
    """({name: (plug-ins, embeddings)} of each variant, the UNet inputs); the clock stays at
    step 0 (inside the self-attention window)."""
    regions = region_context(model, size, size)
    inputs = unet_inputs(model, latent=size // 8)
    pww = PaintWithWords(regions)
    clock = StepClock(30)
    masks = [r.mask for r in regions.regions]
    cols = [r.token_positions[0] for r in regions.regions]
    abar = model.alphas_cumprod
    maps = AttentionMaps(region_groups(regions.regions), (size // 8, size // 8))
    emb = inputs["emb"]
    chunk = emb[:, :77]  # any 77 vectors: the cost does not depend on their values
    wide = torch.cat([emb, chunk], dim=1)
    own = [PromptRegion(masks[2], 0, (1, 2), 1.0)]
    own_plugins = (pww, RegionPrompts(own, 1, size, size, regions.weight_function, "cond"),
                   RegionPrompts([PromptRegion(masks[2], 0, (), 0.0, False)], 1, size, size, None,
                                 "uncond"))
    return {"plain": ((), emb), "PwW": ((pww,), emb), "PwW + maps": ((pww, maps), emb),
            "PwW + self 0.3": ((pww, DenseSelfAttention(masks, clock, abar)), emb),
            "PwW + self 0.3, explicit scores":
                ((pww, ScoresPath(DenseSelfAttention(masks, clock, abar))), emb),
            "PwW + dense cross 1": ((pww, DenseCrossAttention(masks, cols, clock, abar)), emb),
            "PwW + 1 own prompt": (own_plugins, wide), "maps alone": ((maps,), emb)}, inputs


def main(argv: list[str] | None = None) -> int:
    """Time the variants, print a markdown table and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny config (smoke run)")
    p.add_argument("--size", type=int, default=512, help="image size in px (latent = size / 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--variants", nargs="*", default=None,
                   help="time only these (default: all), e.g. PwW 'PwW + self 0.3'; PwW is always timed")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model, _ = build_ours(args.quick, device, DTYPES[args.dtype])
    found, inputs = variants(model, args.size)
    if args.variants:
        unknown = set(args.variants) - set(found)
        if unknown:
            p.error(f"unknown variants {sorted(unknown)}; valid: {list(found)}")
        found = {k: v for k, v in found.items() if k == "PwW" or k in args.variants}
    unet = model.model.diffusion_model
    fns = {}
    for name, (plugins, emb) in found.items():
        ctx = UNetContext(emb, inputs["sigma"], plugins, cond_rows=slice(1, 2))
        fns[name] = (lambda c: lambda: unet(inputs["x"], inputs["t"], context=c))(ctx)
    timed = time_interleaved(fns, device, args.repeats, warmup=1, count_flops=False)
    base = median(timed["PwW"][0])
    rows = [{"variant": k, "median_s": median(v[0]), "times_s": v[0],
             "vs_PwW": median(v[0]) / base} for k, v in timed.items()]
    print("| variant | median s / CFG step | vs PwW |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['median_s']:.3f} | {r['vs_PwW']:.3f} |")
    out = Path(args.out) if args.out else RESULTS / (
        f"features_cpu_{args.dtype}{'_quick' if args.quick else ''}_{args.size}.json")
    write_json_atomic(out, {"settings": vars(args), "machine": machine_info(device), "rows": rows})
    print(json.dumps({"json": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
