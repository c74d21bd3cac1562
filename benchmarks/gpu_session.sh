#!/usr/bin/env bash
# The one prepared run for a lent GPU (issue 14; device time is short): every GPU figure in one go.
# Usage, from the repository root on the GPU machine: bash benchmarks/gpu_session.sh [OUT]   (default $OUT or
# benchmarks/results/gpu). Official-size demo checkpoint, true-fp32 reference (TF32 off), then TF32, fp16 with the
# FP32 islands (autocast and lean), the AOTInductor packages (fp32 and fp16, one bucket per size: compile times land in the artifacts'
# report) and ONNX Runtime, at 256x256, 720p and 1080p, on the LIME/MEF photos when ../shared is there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results/gpu}}"
images=()
[ -d ../shared/data/lowlight ] && images=(--images ../shared/data/lowlight)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee /dev/stderr >/dev/null
python benchmarks/latency.py --device cuda --sizes 256x256,720p,1080p --iters 10 --warmup 2 \
  --backends torch,torch-tf32,torch-fp16,torch-fp16-lean,aoti,aoti-fp16,onnxruntime "${images[@]}" --out "$out"
python -m pytest -q tests/test_runtime.py tests/test_aoti.py -k "cuda or fp16"
