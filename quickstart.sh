#!/usr/bin/env bash
# Set up and run the main job on the embedded default (an untrained demo checkpoint):
# install, write the checkpoint, export + verify the ONNX graph, check it for TensorRT, make the FP16 graph,
# plan the TensorRT build, and enhance a few synthetic low-light images with the runtime. Outputs go to out/.
# QUICKSTART_OUT=DIR writes them elsewhere; QUICKSTART_SKIP_INSTALL=1 skips the pip step (the test suite runs
# this script that way, so CI runs the README's first command).
set -euo pipefail
cd "$(dirname "$0")"
out="${QUICKSTART_OUT:-out}"
if [ -z "${QUICKSTART_SKIP_INSTALL:-}" ]; then
  python -m pip install --quiet "torch==2.13.0"   # first and pinned: an unpinned torch pulls GBs of CUDA packages
  python -m pip install --quiet -e ".[dev]"
fi
mkdir -p "$out/samples"
python -m codeenhance.demo --out "$out/demo.pth" --overwrite
python -m export.onnx --ckpt "$out/demo.pth" --out "$out/model.onnx" --overwrite
python -m export.precision "$out/model.onnx" --out "$out/model_fp16.onnx" --overwrite
python -m export.tensorrt "$out/model_fp16.onnx" --out "$out/" --dry-run --print-trtexec
python - "$out/samples" <<'PY'
import sys
from pathlib import Path
import cv2, numpy as np
from export.fidelity import synthetic_lowlight
for i, rgb in enumerate(synthetic_lowlight(3, (120, 160))):
    bgr = cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(Path(sys.argv[1]) / f"dark_{i}.png"), bgr)
PY
python -m runtime "$out/samples" -o "$out/enhanced" --model "$out/model.onnx" --overwrite
python -m runtime "$out/samples" -o "$out/enhanced_fp16" --model "$out/model_fp16.onnx" --overwrite
echo "done: see $out/ (the demo checkpoint is untrained: the 'enhanced' images are not meaningful)"
