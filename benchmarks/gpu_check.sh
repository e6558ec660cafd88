#!/usr/bin/env bash
# The GPU table on a fresh CUDA machine, in under 8 minutes (one H100/H200 class GPU):
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/gpu_check_*.json
# 1. installs the project into the machine's Python without touching its CUDA torch;
# 2. checks that the UNet with Paint-with-Words regions is ONE graph for torch.compile
#    (torch._dynamo.explain on the full-size UNet, on the GPU);
# 3. fp16: UNet step ours PwW off / on vs diffusers, --compile (ours PwW on vs diffusers), xformers
#    when it runs, VAE decode 512 px, 512 px txt2img with 20 Euler steps (time, it/s, peak memory);
# 4. bf16: the UNet step section only.
# Every bench run is bounded by `timeout`, so a hung stage cannot eat the whole device budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=benchmarks/results

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible: this script is for a GPU machine"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())
EOF

# The machine's torch must stay (a plain `pip install -e .` could pull another build): install
# the project without dependencies, then only the missing ones, which pip resolves against it.
"$PY" -m pip install -q --no-deps -e . 2>&1 | tail -2
"$PY" -m pip install -q "pytorch-lightning>=2.0" "omegaconf>=2.1" "transformers>=4.30" "einops>=0.6" \
    "safetensors>=0.3" "diffusers>=0.27" 2>&1 | tail -2 || echo "pip could not install everything (offline?)"
"$PY" -c "import xformers.ops" 2>/dev/null && echo "xformers importable" || echo "xformers not importable"

echo "== one graph with regions (torch._dynamo.explain, full-size UNet, fp16)"
timeout 240 "$PY" - <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
import torch
from bench_models import build_ours, region_context, unet_inputs
from pww_ldm.conditioning import UNetContext
from pww_ldm.region import PaintWithWords

model, _ = build_ours(False, torch.device("cuda"), torch.float16)
inputs, regions = unet_inputs(model, 64), region_context(model, 512, 512)
context = UNetContext(inputs["emb"], inputs["sigma"], (PaintWithWords(regions),), cond_rows=slice(1, 2))
with torch.no_grad():
    report = torch._dynamo.explain(model.model.diffusion_model)(inputs["x"], inputs["t"], context)
print(f"graphs {report.graph_count}, graph breaks {report.graph_break_count}")
assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons
EOF

echo "== fp16"
timeout 300 "$PY" benchmarks/bench.py --device cuda --dtype fp16 --compile --repeats 10 \
    --repeats-other 5 --vae-sizes 512 --sizes 512 --steps 20 --only unet,kernels,compile,vae,txt2img \
    --out "$OUT/gpu_check_fp16_$STAMP.json"
echo "== bf16"
timeout 90 "$PY" benchmarks/bench.py --device cuda --dtype bf16 --repeats 10 --only unet \
    --out "$OUT/gpu_check_bf16_$STAMP.json"
