"""runtime.openvino_backend: OpenVINO fp32 equals ONNX Runtime; bf16 keeps the FP32 islands and stays close.

Real OpenVINO runs on the tiny preset's graph (conftest.tiny_onnx, exported with codes); skipped without openvino.
"""
from __future__ import annotations

import tempfile

import numpy as np
import pytest

from contract.errors import BadArtifactError

from export.fidelity import psnr
from runtime import BackendError
from runtime.onnxruntime_backend import OnnxRuntimeBackend

ov = pytest.importorskip("openvino", reason='OpenVINO is not installed (pip install "codeenhance-deploy[openvino]")')

from runtime.openvino_backend import PRECISIONS, OpenVINOBackend  # noqa: E402

# Measured on the tiny graph, 2 x 96x128 random dark images (2026.4.1, AMD EPYC): ~40.5 dB against fp32.
# bf16 keeps 8 mantissa bits; the bound leaves room for other CPUs and versions.
BF16_PSNR_DB = 34.0


def batch(n=2, h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3, h, w), dtype=np.float32) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def ort_reference(tiny_onnx):
    x = batch()
    weights = (np.array([1.0, 0.5], np.float32), np.array([1.0, 1.5], np.float32))
    with OnnxRuntimeBackend(tiny_onnx, threads=2) as ort:
        return x, weights, ort.infer(x, *weights)


@pytest.fixture(scope="module")
def bf16(tiny_onnx):
    with OpenVINOBackend(tiny_onnx, precision="bf16", threads=2) as backend:
        yield backend


def test_fp32_matches_onnxruntime(tiny_onnx, ort_reference):
    x, weights, ref = ort_reference
    with OpenVINOBackend(tiny_onnx, precision="fp32", threads=2) as backend:
        out = backend.infer(x, *weights)
        info = backend.describe()
        odd = backend.infer(batch(1, 37, 53, seed=1), np.ones(1, np.float32), np.ones(1, np.float32))  # another H, W
    assert np.abs(out.enhanced - ref.enhanced).max() < 1e-4
    np.testing.assert_array_equal(out.codes, ref.codes)
    assert odd.enhanced.shape == (1, 3, 37, 53)
    assert info.name == "openvino" and info.precision == "fp32" and info.device.startswith("CPU (")
    assert info.extra["inference_precision_hint"] == "f32"  # set explicitly: the CPU default may be bf16
    assert set(info.extra["runtime_precision"]["compute_nodes"]) <= {"f32", "i32", "i64", "u8", "boolean"}
    assert info.max_hw is None and info.extra["threads"] == 2


def test_bf16_runs_close_and_keeps_the_islands_fp32(bf16, ort_reference):
    x, weights, ref = ort_reference
    out = bf16.infer(x, *weights)
    assert np.isfinite(out.enhanced).all()
    assert psnr(out.enhanced, ref.enhanced) > BF16_PSNR_DB
    assert np.mean(out.codes == ref.codes) > 0.95
    info = bf16.describe()
    assert info.precision == "bf16-mixed" and info.extra["inference_precision_hint"] == "bf16"
    report = info.extra["runtime_precision"]
    # The lookup: the distance product (FullyConnected), the ArgMin (TopK), the Gather of codebook rows, all f32.
    lookup = report["lookup"].values()
    assert sorted(n["layer_type"] for n in lookup) == ["FullyConnected", "Gather", "TopK"]
    assert all(n["precision"] == "f32" for n in lookup), report["lookup"]
    by_type = report["by_layer_type"]
    assert set(by_type["MVN"]) == {"f32"}  # every LayerNorm / InstanceNorm
    assert by_type["Convolution"].get("bf16", 0) >= 0.9 * sum(by_type["Convolution"].values())
    fc = by_type["FullyConnected"]
    assert fc.get("f32") == 1 and fc.get("bf16", 0) >= 1  # only the lookup's product stays f32
    islands = info.extra["fp32_islands"]
    assert islands["reasons"]["lookup"] == 6 and islands["reasons"]["normalisation"] > 0


def test_keep_fp32_widens_the_islands(tiny_onnx):
    with OpenVINOBackend(tiny_onnx, precision="bf16", threads=2, keep_fp32=["Gemm"]) as backend:
        fc = backend.describe().extra["runtime_precision"]["by_layer_type"]["FullyConnected"]
    assert set(fc) == {"f32"}  # the Gemms' bias is folded into the product, so their f32 mark survives
    with pytest.raises(ValueError, match="NoSuchOp"):
        OpenVINOBackend(tiny_onnx, precision="bf16", keep_fp32=["NoSuchOp"]).load()


def test_static_shapes_compile_per_input_shape_and_match_dynamic(tiny_onnx, ort_reference):
    x, weights, ref = ort_reference
    one = (np.ones(1, np.float32),) * 2
    with OpenVINOBackend(tiny_onnx, precision="fp32", threads=2, shapes="static") as static:
        assert static.compiled_shape == (1, 3, 32, 32) and static.compiles == 1  # the probe compiled at load
        out = static.infer(x, *weights)
        assert static.compiled_shape == x.shape and static.compiles == 2
        static.infer(x, *weights)
        assert static.compiles == 2  # same shape: no recompile
        odd = static.infer(batch(1, 37, 53, seed=1), *one)
        assert static.compiled_shape == (1, 3, 37, 53) and static.compiles == 3
        workdir = static.workdir
        assert static.describe().extra["shapes"] == "static" and workdir.is_dir()
    assert not workdir.exists()  # the converted IR is removed on close
    with OpenVINOBackend(tiny_onnx, precision="fp32", threads=2, shapes="dynamic") as dynamic:
        odd_dynamic = dynamic.infer(batch(1, 37, 53, seed=1), *one)
        assert dynamic.compiled_shape is None and dynamic.compiles == 1
    assert np.abs(out.enhanced - ref.enhanced).max() < 1e-4
    np.testing.assert_array_equal(out.codes, ref.codes)
    assert np.abs(odd.enhanced - odd_dynamic.enhanced).max() < 1e-4


def test_cache_dir_makes_a_second_start_import_the_compiled_model(tiny_onnx, tmp_path, ort_reference):
    x, weights, _ = ort_reference
    cache = tmp_path / "cache"
    with OpenVINOBackend(tiny_onnx, precision="bf16", threads=2, cache_dir=cache, shapes="dynamic") as first:
        assert first.compiled.get_property("LOADED_FROM_CACHE") is False
        a = first.infer(x, *weights)
        assert first.describe().extra["fp32_islands"]["ir"].startswith(str(cache))
    blobs = sorted(cache.glob("*.blob"))
    assert blobs and sorted(cache.glob("*.xml")), sorted(p.name for p in cache.iterdir())
    with OpenVINOBackend(tiny_onnx, precision="bf16", threads=2, cache_dir=cache, shapes="dynamic") as second:
        assert second.compiled.get_property("LOADED_FROM_CACHE") is True
        b = second.infer(x, *weights)
        assert second.describe().extra["fp32_islands"]["reused_ir"] is True
        lookup = second.describe().extra["runtime_precision"]["lookup"].values()
    assert sorted(cache.glob("*.blob")) == blobs  # imported, not compiled again
    assert all(n["precision"] == "f32" for n in lookup)
    np.testing.assert_array_equal(a.enhanced, b.enhanced)


def test_bad_options_and_files_are_refused(tiny_onnx, tmp_path, monkeypatch):
    assert PRECISIONS == ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        OpenVINOBackend(tiny_onnx, precision="fp16")
    with pytest.raises(ValueError, match="shapes must be one of static, dynamic, got 'fixed'"):
        OpenVINOBackend(tiny_onnx, shapes="fixed")
    with pytest.raises(BackendError, match="model not found"):
        OpenVINOBackend(tmp_path / "missing.onnx").load()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(BadArtifactError, match="bad.onnx is corrupt: onnx cannot parse it"):  # exit 2
        OpenVINOBackend(bad).load()
    assert not list(scratch.iterdir())  # no conversion folder left behind
    with pytest.raises(BackendError, match=r"\.onnx graph or an OpenVINO IR"):
        (tmp_path / "m.bin").write_bytes(b"x")
        OpenVINOBackend(tmp_path / "m.bin").load()


def test_an_ir_written_by_the_backend_runs_as_bf16_mixed(tiny_onnx, tmp_path, bf16, ort_reference):
    x, weights, _ = ort_reference
    with OpenVINOBackend(tiny_onnx, precision="bf16", threads=2, cache_dir=tmp_path) as first:
        xml = first.describe().extra["fp32_islands"]["ir"]
    with OpenVINOBackend(xml, precision="bf16", threads=2) as from_ir:
        lookup = from_ir.describe().extra["runtime_precision"]["lookup"].values()
        out = from_ir.infer(x, *weights)
    assert all(n["precision"] == "f32" for n in lookup)  # the marks travel in the IR
    np.testing.assert_allclose(out.enhanced, bf16.infer(x, *weights).enhanced, atol=1e-6)


def test_export_writes_a_bf16_ir_with_half_the_weights_that_runs_bf16(tiny_onnx, tmp_path, bf16, ort_reference):
    from export.openvino import main as export_main

    x, weights, ref = ort_reference
    bf16_xml, fp32_xml = tmp_path / "m-bf16.xml", tmp_path / "m-fp32.xml"
    lenient = ["--min-psnr", "30", "--min-worst-psnr", "30", "--min-code-agreement", "0.9", "--calib-count", "2", "--threads", "2"]
    # Below the fidelity bar nothing is written (exit 1): bf16 never reaches 99 dB against fp32.
    assert export_main([str(tiny_onnx), "--out", str(bf16_xml), "--min-psnr", "99", "--calib-count", "1"]) == 1
    assert not list(tmp_path.iterdir())
    assert export_main([str(tiny_onnx), "--out", str(bf16_xml), *lenient]) == 0
    assert export_main([str(tiny_onnx), "--out", str(fp32_xml), "--precision", "fp32"]) == 0
    # Convolution/MatMul weights outside the islands are stored bf16: the .bin is about half the fp32 one.
    assert bf16_xml.with_suffix(".bin").stat().st_size < 0.6 * fp32_xml.with_suffix(".bin").stat().st_size
    with OpenVINOBackend(bf16_xml, threads=2) as from_ir:  # precision None: the IR's own
        info = from_ir.describe()
        out = from_ir.infer(x, *weights)
    assert info.precision == "bf16-mixed" and info.extra["inference_precision_hint"] == "bf16"
    assert all(n["precision"] == "f32" for n in info.extra["runtime_precision"]["lookup"].values())
    # Stored bf16 weights are what the bf16 kernels compute with: as close to fp32 as the on-the-fly conversion.
    assert psnr(out.enhanced, ref.enhanced) > BF16_PSNR_DB and np.mean(out.codes == ref.codes) > 0.95
    with pytest.raises(BackendError, match="was written for bf16"):
        OpenVINOBackend(bf16_xml, precision="fp32").load()
    with pytest.raises(ValueError, match="keep_fp32 applies when converting"):
        OpenVINOBackend(bf16_xml, keep_fp32=["Softmax"]).load()
    with OpenVINOBackend(fp32_xml, threads=2) as plain:
        assert plain.describe().precision == "fp32"
    with pytest.raises(BackendError, match="was not written for bf16"):  # no islands marked: the lookup would be bf16
        OpenVINOBackend(fp32_xml, precision="bf16").load()
    # An existing IR is not replaced without --overwrite; a non-.xml name is refused; nothing else is written.
    before = sorted(p.name for p in tmp_path.iterdir())
    assert export_main([str(tiny_onnx), "--out", str(bf16_xml), *lenient]) == 2
    assert export_main([str(tiny_onnx), "--out", str(tmp_path / "m.bin")]) == 2
    assert export_main([str(bf16_xml), "--out", str(tmp_path / "x.xml")]) == 2  # not an ONNX graph
    assert export_main([str(tiny_onnx), "--out", str(tmp_path / "y.xml"), "--precision", "fp32", "--keep-fp32", "Gemm"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_cli_runs_an_ir_and_takes_shapes(tiny_onnx, tmp_path, capsys):
    import cv2

    from runtime.cli import main as cli_main

    rng = np.random.default_rng(3)
    for name, hw in (("a.png", (40, 56)), ("b.png", (33, 47))):
        cv2.imwrite(str(tmp_path / name), (rng.random((*hw, 3)) * 60).astype(np.uint8))
    ir = tmp_path / "m-bf16.xml"
    from export.openvino import export_ir

    export_ir(tiny_onnx, ir, "bf16", check=False)
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert cli_main([*images, "-o", str(tmp_path / "out"), "--model", str(ir), "--shapes", "dynamic"]) == 0
    err = capsys.readouterr().err
    assert "with openvino on CPU" in err and "(bf16-mixed)" in err  # the IR's own precision, reported
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    # --shapes belongs to openvino: refused (exit 2) for the onnxruntime backend, nothing written.
    assert cli_main([images[0], "-o", str(tmp_path / "out2"), "--model", str(tiny_onnx), "--shapes", "static"]) == 2
    assert not (tmp_path / "out2").exists()
