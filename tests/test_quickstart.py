"""README's first command, as a new user runs it: quickstart.sh (install step skipped: the suite runs installed).

The embedded default (the trained tiny checkpoint) is exported with verification, converted to FP16, planned for
TensorRT and run through the runtime on the darkened sample photos; the enhanced images must be closer to the
photos than the dark inputs were."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import cv2
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "QUICKSTART_OUT": str(out), "QUICKSTART_SKIP_INSTALL": "1"}
    result = subprocess.run(["bash", "quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    return out, result


def test_quickstart_enhances_the_sample_photos(quickstart):
    out, result = quickstart
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verification passed" in result.stdout
    assert "TRAINED tiny" in result.stdout
    dark = sorted((out / "samples").glob("*.png"))
    assert len(dark) == 2 * len(list((REPO / "samples").glob("*.jpg"))) >= 6
    for folder in ("enhanced", "enhanced_fp16"):
        for path in dark:
            assert cv2.imread(str(out / folder / path.name)).shape == cv2.imread(str(path)).shape
    gains = [float(m.group(2)) - float(m.group(1))
             for m in re.finditer(r"input\s+([\d.]+) dB -> enhanced\s+([\d.]+) dB", result.stdout)]
    assert len(gains) == len(dark) and min(gains) > 3.0, gains  # a real before/after: every photo gets closer
    assert (out / "model-bf16.xml").exists() and len(list((out / "enhanced_bf16").glob("*.png"))) == len(dark)
    assert re.search(r"720p on this CPU: ONNX Runtime fp32 [\d.]+ s, OpenVINO bf16 [\d.]+ s", result.stdout)


def test_quickstart_graphs_say_what_they_are(quickstart):
    out, result = quickstart
    assert result.returncode == 0
    props = {p.key: p.value for p in onnx.load(str(out / "model_fp16.onnx"), load_external_data=False).metadata_props}
    assert props["precision"] == "fp16-mixed"
    assert "with onnxruntime on CPUExecutionProvider (fp16-mixed)" in result.stderr
    assert "trtexec" in result.stdout  # the TensorRT dry run printed its recipe
