#!/usr/bin/env bash
# Set up and run the main job on the embedded default (an untrained demo checkpoint):
# install, write the checkpoint, export + verify the ONNX graph, check it for TensorRT, make the FP16 graph,
# plan the TensorRT build, and enhance a few synthetic low-light images with the runtime. Outputs go to out/.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet "torch==2.13.0"   # first and pinned: an unpinned torch pulls GBs of CUDA packages
python -m pip install --quiet -e ".[dev]"
mkdir -p out/samples
python -m codeenhance.demo --out out/demo.pth --overwrite
python -m export.onnx --ckpt out/demo.pth --out out/model.onnx --overwrite
python -m export.precision out/model.onnx --out out/model_fp16.onnx --overwrite
python -m export.tensorrt out/model_fp16.onnx --out out/ --dry-run --print-trtexec
python - <<'PY'
import cv2, numpy as np
from export.fidelity import synthetic_lowlight
for i, rgb in enumerate(synthetic_lowlight(3, (120, 160))):
    cv2.imwrite(f"out/samples/dark_{i}.png", cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
PY
python -m runtime out/samples -o out/enhanced --model out/model.onnx --overwrite
echo "done: see out/ (the demo checkpoint is untrained: the 'enhanced' images are not meaningful)"
