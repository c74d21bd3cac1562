#!/usr/bin/env bash
# The one prepared run for a lent GPU (issue 14; device time is short): every GPU figure in one go.
# Usage, from the repository root on the GPU machine: bash benchmarks/gpu_session.sh [eager|aoti] [OUT]   (default
# eager, $OUT or benchmarks/results/gpu). A device command may run 10 minutes at most: "eager" (the torch rows,
# then the CUDA tests) fits; "aoti" compiles one package bucket per size and precision (minutes each)
# and goes in its own call. Official-size demo checkpoint, true-fp32 reference (TF32 off), then TF32, fp16 with the
# FP32 islands (autocast, lean, lean from CUDA graphs), the AOTInductor packages (fp32 and fp16, one bucket per size: compile times land in the artifacts'
# report), at 256x256, 720p and 1080p, on the LIME/MEF photos when ../shared is there. ONNX Runtime is left out:
# that machine has only its CPU build (its CPU figures are measured here).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout is not installed on the GPU machine
py="${PYTHON:-python3}"  # there, python3 is the interpreter that holds torch
phase="${1:-eager}"
out="${2:-${OUT:-benchmarks/results/gpu}}"
# ../shared does not travel to the GPU machine: copy the photos into an ignored folder, carry it, set IMAGES.
photos="${IMAGES:-.gpu_data/lowlight}"  # the folder gpu_train.sh's set-up fills (it is carried)
[ -d "$photos" ] || photos=../shared/data/lowlight
images=()
[ -d "$photos" ] && images=(--images "$photos")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee /dev/stderr >/dev/null
if [ "$phase" = aoti ]; then
  "$py" benchmarks/latency.py --device cuda --sizes 256x256,720p,1080p --iters 10 --warmup 2 \
    --backends torch,aoti,aoti-fp16 "${images[@]}" --out "$out-aoti"
  "$py" -m pytest -q tests/test_aoti.py -k "cuda or fp16"
else
  "$py" benchmarks/latency.py --device cuda --sizes 256x256,720p,1080p --iters 10 --warmup 2 \
    --backends torch,torch-tf32,torch-fp16,torch-fp16-lean,torch-fp16-lean-graphs "${images[@]}" --out "$out"
  "$py" -m pytest -q tests/test_runtime.py -k "cuda or fp16"
fi
