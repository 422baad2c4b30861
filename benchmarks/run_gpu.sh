#!/usr/bin/env bash
# The GPU part of the performance plan, in one command (an H100 or H200; about 25 minutes on an H100 by estimate,
# not yet measured). Each line writes JSON + a markdown table to benchmarks/ named after the device; the README
# quotes them. Full-size architectures with random weights: no download is needed.
#
#   bash benchmarks/run_gpu.sh            # all of it
#   PEAK=989 bash benchmarks/run_gpu.sh   # give the datasheet's dense bf16 TFLOP/s instead of a measured matmul
set -euo pipefail
cd "$(dirname "$0")/.."
peak=(${PEAK:+--peak-tflops "$PEAK"})
b=(depth2img bench "${peak[@]}")

# 1. Batch-1 latency (target: >= 2x plain diffusers), then dataset mode (targets: >= 45 % of bf16 peak, >= 19,000
#    images/hour on an H100, >= 3x plain diffusers run one image per call).
"${b[@]}" --batch 1
"${b[@]}" --batch 16
# 2. torch.compile: choose the mode by measurement (reduce-overhead = CUDA graphs; shapes are static here).
for mode in default reduce-overhead max-autotune-no-cudagraphs max-autotune; do
  "${b[@]}" --batch 1 --compile "$mode" || echo "compile mode $mode failed" >&2
  "${b[@]}" --batch 16 --compile "$mode" || echo "compile mode $mode failed" >&2
done
# 3. ControlNet skipped outside its window, and the feature cache (a quality trade: its diff is reported).
"${b[@]}" --batch 16 --control-end 0.8
"${b[@]}" --batch 16 --feature-cache 3
# 4. xformers against SDPA (only when the extra is installed).
if python -c "import xformers" 2>/dev/null; then "${b[@]}" --batch 1 --attention xformers; fi
# 5. Depth estimators: transformers' pipeline one image per call (fp16) against depth2img batched in bf16.
"${b[@]}" --depth --batch 16
# 6. Low-VRAM budgets (targets: SD1.5 + ControlNet < 4 GB, SDXL + ControlNet < 8 GB peak).
"${b[@]}" --low-vram --repeats 1
"${b[@]}" --backbone sdxl --low-vram --repeats 1 --steps 10
