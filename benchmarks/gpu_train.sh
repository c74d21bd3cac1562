#!/usr/bin/env bash
# Issue 20's training on a lent GPU, in one device call (at most 10 minutes): trains a preset from the reference
# photos on CUDA, measures its quality on that machine's CPU cores, and leaves the checkpoint, the logs and the
# quality report in OUT. Run it with what is left after `gpu_session.sh`.
#
# ../shared does not travel to the GPU machine, and the machine has torch, OpenCV, numpy and tqdm but not
# pytorch-msssim (and cannot download it). Before the call, here (30 MB in all, git-ignored):
#   mkdir -p .gpu_data/wheels && cp -r ../shared/data/reference ../shared/data/lowlight .gpu_data/
#   pip download pytorch-msssim==1.0.0 --no-deps -d .gpu_data/wheels
# then the device call: command "bash benchmarks/gpu_train.sh 1.5,5", carry [".gpu_data"], timeout_s 600.
#
# Usage: bash benchmarks/gpu_train.sh [S1,S2 stage minutes, default 1.5,5] [preset, default tiny] [OUT]
# Environment: BATCH (default 32), WORKERS (batch processes, default 12), DEVICE (default cuda; DEVICE=cpu with a
# budget of seconds checks the script here, as tests/test_train.py does), GPU_DATA (default .gpu_data), PYTHON
# (default python3: the one that holds torch there), RUN (the run folder, replaced; default runs/gpu-PRESET),
# MAX_SIDE (photo size of the quality report, default 512).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout is not installed there
py="${PYTHON:-python3}"
minutes="${1:-1.5,5}"
preset="${2:-tiny}"
out="${3:-${OUT:-benchmarks/results/gpu-train}}"
data="${GPU_DATA:-.gpu_data}"
device="${DEVICE:-cuda}"
run="${RUN:-runs/gpu-$preset}"  # the run folder (replaced)
for folder in "$data/reference" "$data/lowlight"; do
  [ -d "$folder" ] || { echo "error: $folder not found: copy ../shared/data/{reference,lowlight} into $data and carry it" >&2; exit 2; }
done
mkdir -p "$out"
"$py" -c "import pytorch_msssim" 2>/dev/null || "$py" -m pip install -q --no-deps --no-index "$data"/wheels/pytorch_msssim-*.whl
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
rm -rf "$run"
# The progress bar goes to a file (it redraws every second); the loss averages are in train_log.jsonl.
"$py" -m codeenhance.train --photos "$data/reference" --out "$run" --preset "$preset" --stage-minutes "$minutes" \
  --device "$device" --batch "${BATCH:-32}" --workers "${WORKERS:-12}" --threads 4 --seed 0 --save-every 1 \
  --log-every 100 2> "$out/train_progress.txt"
tail -n 3 "$run/train_log.jsonl"
"$py" benchmarks/quality.py --ckpt "$run/net_g_latest.pth" --photos "$data/reference" --lowlight "$data/lowlight" \
  --max-side "${MAX_SIDE:-512}" --threads 8 --out "$out/quality.md"
cp "$run/net_g_latest.pth" "$run/train_log.jsonl" "$out/"
