#!/usr/bin/env bash
# Every speed/fidelity trade-off re-measured on a trained checkpoint, one command:
#   bash benchmarks/trained_tradeoffs.sh [CKPT] [RESULTS_DIR]
# CKPT defaults to the shipped trained tiny checkpoint; the artifacts go to out/trained/, the reports (one .md per
# study, with the command that made it) to RESULTS_DIR (default benchmarks/results/cpu-2core/trained/).
# Needs ../shared/data (reference photos, LIME/MEF) and the [dev] and [int8] extras; ~20 minutes on a quiet 2-core machine,
# ~40 on a shared one (the int8 accuracy control is half of it).
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="${1:-codeenhance/weights/codeenhance_tiny.pth}"
res="${2:-benchmarks/results/cpu-2core/trained}"
photos=../shared/data/reference
lowlight=../shared/data/lowlight
art=out/trained
mkdir -p "$art" "$res"
run() { local name=$1; shift; echo "== $name: $*"; { echo '```'; echo "$*"; echo '```'; echo; "$@"; } > "$res/$name.md" 2>"$art/$name.err" || { echo "   failed (exit $?), see $art/$name.err"; tail -5 "$art/$name.err"; }; }

python -m codeenhance.demo --out "$art/random.pth" --untrained --preset tiny --overwrite >/dev/null
run quality python benchmarks/quality.py --ckpt "$ckpt" --photos "$photos" --lowlight "$lowlight" \
    --sweep 0.03 0.05 0.1 0.2 0.35 0.5 --out "$art/quality_report.md" --picture "$art/before_after.png" --lowlight-picture "$art/lowlight.png"
run near_ties python benchmarks/near_ties.py --ckpt "trained=$ckpt" --ckpt "random=$art/random.pth" --images "$lowlight"
python -m export.onnx --ckpt "$ckpt" --out "$art/codes.onnx" --with-codes --overwrite > "$art/export.log" 2>&1
python -m export.precision "$art/codes.onnx" --out "$art/fp16.onnx" --calib "$lowlight" --overwrite > "$art/precision.log" 2>&1 || true
run fp16 python benchmarks/fp16_fidelity.py --fp32 "$art/codes.onnx" --fp16 "mixed=$art/fp16.onnx" --images "$lowlight"
run openvino_bf16 python benchmarks/openvino_speed.py --onnx "$art/codes.onnx" --sizes 256x256,720p --repeats 3 \
    --rss-sizes 256x256 --images "$lowlight"
run openvino_export python -m export.openvino "$art/codes.onnx" --out "$art/model-bf16.xml" --calib "$lowlight" --calib-count 8 --overwrite
run int8 python benchmarks/openvino_int8.py --onnx "$art/codes.onnx" --images "$lowlight" --size 256x256 --repeats 3
run int8_accuracy_control python benchmarks/openvino_int8.py --onnx "$art/codes.onnx" --images "$lowlight" --size 256x256 \
    --repeats 3 --max-side 192 --accuracy-control 45
run tiling python benchmarks/tiling.py --model "$art/codes.onnx" --photos 6
run tiling_full_size python benchmarks/tiling.py --model "$art/codes.onnx" --photos 6 --longest 0 --configs 511:32,1023:32
python -m export.aoti --ckpt "$ckpt" --out "$art/model.pt2" --sizes 256x256 --overwrite > "$art/aoti_export.log" 2>&1 || true
run aoti python benchmarks/aoti_cpu.py --ckpt "$ckpt" --pt2 "$art/model.pt2" --onnx "$art/codes.onnx" --size 256x256 --repeats 5 \
    --images "$lowlight"
echo "reports in $res/"
