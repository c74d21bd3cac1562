"""Integrity at load (contract/integrity.py): each kind of artifact the toolkit writes, corrupted in the middle, is
refused with the file named (exit 2) or, for a cache, rebuilt with a note; never run. The TensorRT engine's case is
in test_runtime_tensorrt.py and the .pt2 package's in test_aoti.py (they need those modules' fixtures)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.errors import BadArtifactError
from contract.integrity import check_onnx, read_onnx

REPO = Path(__file__).resolve().parents[1]


def flip_middle(path: Path, count: int = 4096) -> None:
    """Invert ``count`` bytes in the middle of a file (a disk or copy error that keeps the file's size)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def batch(size: int = 64):
    images = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    ones = np.ones(1, np.float32)
    return images, ones, ones


@pytest.fixture
def corrupt_onnx(tiny_onnx, tmp_path) -> Path:
    path = tmp_path / "flipped.onnx"
    shutil.copy(tiny_onnx, path)
    flip_middle(path)
    return path


def test_an_exported_graph_records_its_payload_hash(tiny_onnx, corrupt_onnx):
    assert check_onnx(read_onnx(tiny_onnx), tiny_onnx) is True
    model = read_onnx(corrupt_onnx)  # the flipped bytes are inside a weight: protobuf still parses it
    with pytest.raises(BadArtifactError, match=r"flipped\.onnx is corrupt.*changed on disk"):
        check_onnx(model, corrupt_onnx)


def test_onnxruntime_refuses_a_corrupt_graph(tiny_onnx, corrupt_onnx):
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    with OnnxRuntimeBackend(tiny_onnx) as good:
        assert good.describe().extra["integrity"] == "payload hash verified"
    with pytest.raises(BadArtifactError, match="flipped.onnx is corrupt"):
        OnnxRuntimeBackend(corrupt_onnx).load()


def test_the_enhance_command_exits_2_and_writes_nothing(corrupt_onnx, tmp_path):
    photo = tmp_path / "in.png"
    import cv2

    cv2.imwrite(str(photo), np.full((40, 48, 3), 60, np.uint8))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "runtime", str(photo), "-o", str(out), "--model", str(corrupt_onnx)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "flipped.onnx is corrupt" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_an_onnx_graph_named_beside_another_checkpoint_is_refused(tiny_onnx, tmp_path):
    from benchmarks.latency import main as latency_main
    from codeenhance import TINY
    from codeenhance.demo import save_demo_checkpoint

    other = save_demo_checkpoint(tmp_path / "other.pth", seed=7, config=TINY)
    assert latency_main(["--ckpt", str(other), "--onnx", str(tiny_onnx), "--backends", "onnxruntime",
                         "--sizes", "64x64", "--out", str(tmp_path / "results")]) == 2
    assert not (tmp_path / "results").exists()


def test_latency_names_both_files(tiny_onnx, tmp_path):
    from codeenhance import TINY
    from codeenhance.demo import save_demo_checkpoint

    other = save_demo_checkpoint(tmp_path / "other.pth", seed=7, config=TINY)
    r = subprocess.run([sys.executable, "benchmarks/latency.py", "--ckpt", str(other), "--onnx", str(tiny_onnx),
                        "--backends", "onnxruntime", "--sizes", "64x64", "--out", str(tmp_path / "results")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"{tiny_onnx}: it was made from a different checkpoint than {other}" in r.stderr


@pytest.fixture
def openvino():
    return pytest.importorskip("openvino", reason="the [openvino] extra is not installed")


def test_openvino_refuses_a_corrupt_graph_and_a_corrupt_ir(openvino, tiny_onnx, corrupt_onnx, tmp_path):
    from runtime.openvino_backend import OpenVINOBackend

    with pytest.raises(BadArtifactError, match="flipped.onnx is corrupt"):
        OpenVINOBackend(corrupt_onnx).load()
    cache = tmp_path / "cache"
    with OpenVINOBackend(tiny_onnx, cache_dir=cache) as backend:
        assert backend.describe().extra["integrity"] == "payload hash verified"
    xml = next(cache.glob("*.xml"))
    ir = tmp_path / "ir"
    ir.mkdir()
    for source in (xml, xml.with_suffix(".bin")):
        shutil.copy(source, ir / ("model" + source.suffix))
    with OpenVINOBackend(ir / "model.xml") as backend:
        assert backend.describe().extra["integrity"] == "payload hash verified"
    flip_middle(ir / "model.bin")
    with pytest.raises(BadArtifactError, match=r"model\.xml is corrupt.*python -m export\.openvino"):
        OpenVINOBackend(ir / "model.xml").load()
    shutil.copy(xml.with_suffix(".bin"), ir / "model.bin")  # the weights intact, the graph text edited
    text = (ir / "model.xml").read_text()
    (ir / "model.xml").write_text(text.replace('<data element_type="f32" shape="1"', '<data element_type="f32" shape="2"', 1))
    if (ir / "model.xml").read_text() != text:
        with pytest.raises(BadArtifactError, match="model.xml is corrupt"):
            OpenVINOBackend(ir / "model.xml").load()


@pytest.mark.parametrize("target", ["*.bin", "*.blob"])
def test_a_corrupt_openvino_cache_entry_is_rebuilt_with_a_note(openvino, tiny_onnx, tmp_path, target):
    from runtime.openvino_backend import OpenVINOBackend

    cache = tmp_path / "cache"
    with OpenVINOBackend(tiny_onnx, cache_dir=cache, shapes="dynamic") as backend:
        reference = backend.infer(*batch()).enhanced
    entries = sorted(cache.glob(target))
    assert entries, f"nothing matching {target} in {sorted(p.name for p in cache.iterdir())}"
    flip_middle(entries[0])
    with OpenVINOBackend(tiny_onnx, cache_dir=cache, shapes="dynamic") as backend:
        again = backend.infer(*batch()).enhanced
        notes = backend.describe().extra["cache_notes"]
    assert len(notes) == 1 and "rebuilt" in notes[0] and entries[0].stem in notes[0]
    np.testing.assert_array_equal(again, reference)
    with OpenVINOBackend(tiny_onnx, cache_dir=cache, shapes="dynamic") as backend:
        assert backend.describe().extra["cache_notes"] == []  # the rebuilt entry is trusted again
