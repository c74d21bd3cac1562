"""README's first command, as a new user runs it: quickstart.sh (install step skipped: the suite runs installed).

The official-size demo checkpoint is exported with verification, converted to FP16, planned for TensorRT and run
through the runtime; this is the path that failed on a fresh machine while the tiny-preset tests passed."""
from __future__ import annotations

import os
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


def test_quickstart_passes_on_the_official_size_demo(quickstart):
    out, result = quickstart
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verification passed" in result.stdout
    for folder in ("enhanced", "enhanced_fp16"):
        written = sorted((out / folder).glob("dark_*.png"))
        assert len(written) == 3 and all(cv2.imread(str(p)).shape == (120, 160, 3) for p in written)


def test_quickstart_graphs_say_what_they_are(quickstart):
    out, result = quickstart
    assert result.returncode == 0
    props = {p.key: p.value for p in onnx.load(str(out / "model_fp16.onnx"), load_external_data=False).metadata_props}
    assert props["precision"] == "fp16-mixed"
    assert "with onnxruntime on CPUExecutionProvider (fp16-mixed)" in result.stderr
    assert "trtexec" in result.stdout  # the TensorRT dry run printed its recipe
