#!/usr/bin/env bash
# Set up and run the main job on the embedded default (the trained tiny checkpoint, codeenhance/weights/):
# install, write the checkpoint, export + verify the ONNX graph, check it for TensorRT, make the FP16 graph,
# plan the TensorRT build, darken the sample photos (samples/) and enhance them with the runtime: a real
# before/after, with PSNR against the photos. Outputs go to out/.
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
# Darken the CC0 sample photos with the training degradation (a mild and a severe exposure).
import sys
from pathlib import Path
import cv2, numpy as np
from codeenhance.degrade import STRENGTHS, degrade
from contract.images import list_images, load_rgb
out = Path(sys.argv[1])
for i, path in enumerate(list_images("samples")):
    for strength, exposure in STRENGTHS.items():
        dark = degrade(load_rgb(path), np.random.default_rng(i), exposure=exposure)
        cv2.imwrite(str(out / f"{path.stem}_{strength}.png"), cv2.cvtColor(np.round(dark * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
PY
python -m runtime "$out/samples" -o "$out/enhanced" --model "$out/model.onnx" --overwrite
python -m runtime "$out/samples" -o "$out/enhanced_fp16" --model "$out/model_fp16.onnx" --overwrite
# OpenVINO bf16 on the CPU: written only if the image stays within the fidelity bar on the dark samples.
python -m export.openvino "$out/model.onnx" --out "$out/model-bf16.xml" --calib "$out/samples" --overwrite
python -m runtime "$out/samples" -o "$out/enhanced_bf16" --model "$out/model-bf16.xml" --overwrite
python - "$out" <<'PY'
# The CPU speedup at 720p: ONNX Runtime fp32 against the OpenVINO bf16 IR, alternating, best of 2 after a warm-up.
import sys, time
from pathlib import Path
import cv2, runtime
from contract.images import load_rgb
out = Path(sys.argv[1])
image = cv2.resize(load_rgb(sorted((out / "samples").glob("*.png"))[0]), (1280, 720), interpolation=cv2.INTER_LINEAR)
engines = {"ONNX Runtime fp32": runtime.Enhancer(str(out / "model.onnx")), "OpenVINO bf16": runtime.Enhancer(str(out / "model-bf16.xml"))}
best = {name: float("inf") for name in engines}
for _ in range(3):
    for name, enhancer in engines.items():
        start = time.perf_counter(); enhancer.enhance(image); best[name] = min(best[name], time.perf_counter() - start)
fp32, bf16 = best.values()
print(f"720p on this CPU: ONNX Runtime fp32 {fp32:.2f} s, OpenVINO bf16 {bf16:.2f} s ({bf16 / fp32:.2f}x, best of 3 runs alternating)")
PY
python - "$out" <<'PY'
# Before/after: PSNR of the dark input and of the enhanced image against the original photo.
import sys
from pathlib import Path
import numpy as np
from contract.images import load_rgb
out = Path(sys.argv[1])
psnr = lambda a, b: 10 * np.log10(1 / np.mean((a - b) ** 2))
for dark in sorted((out / "samples").glob("*.png")):
    truth = load_rgb(Path("samples") / (dark.stem.rsplit("_", 1)[0] + ".jpg"))
    print(f"{dark.name}: input {psnr(load_rgb(dark), truth):5.2f} dB -> enhanced {psnr(load_rgb(out / 'enhanced' / dark.name), truth):5.2f} dB")
PY
echo "done: see $out/ (before: $out/samples/, after: $out/enhanced/)"
