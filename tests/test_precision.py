"""FP16 conversion (export/precision.py) of the tiny-preset export, and the fidelity metrics (export/fidelity.py)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import fidelity, precision

REPO = Path(__file__).resolve().parents[1]
FAST = ["--calib-count", "2", "--calib-size", "96"]  # the tiny graph at 72x96: seconds, not minutes
NORM_OPS = {"GroupNormalization", "InstanceNormalization", "LayerNormalization"}


def quiet(*_):
    pass


def need_backend(backend: str = "auto") -> None:
    """Skip when the converter library is not installed (AutoCast is optional; onnxconverter-common is the fallback)."""
    if precision.pick_backend(backend) == "onnxconverter":
        pytest.importorskip("onnxconverter_common", reason="pip install onnxconverter-common")


@pytest.fixture(scope="module")
def converted(tiny_onnx):
    """(FP16 path, report dict, converted model, its GraphIndex) with the default backend, via the CLI."""
    need_backend()
    out = tiny_onnx.with_name("tiny_fp16.onnx")
    assert precision.main([str(tiny_onnx), "--out", str(out), *FAST]) == 0
    report = json.loads(out.with_suffix(".precision.json").read_text())
    model = onnx.load(str(out))
    return out, report, model, precision.index_graph(model)


def float_types(ix, node) -> set[int]:
    return {ix.elem_type.get(t) for t in (*node.input, *node.output) if ix.elem_type.get(t) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def fp32_only(ix, node) -> bool:
    return float_types(ix, node) == {onnx.TensorProto.FLOAT}


def fp16_share(ix, op_type: str) -> float:
    nodes = [n for n in ix.nodes if n.op_type == op_type]
    return sum(onnx.TensorProto.FLOAT16 in float_types(ix, n) for n in nodes) / len(nodes)


def run(path, image):
    return fidelity.ort_session(path).run(None, fidelity.graph_feed(image))


# ------------------------------------------------------------------------------------------- conversion


def test_io_names_and_fp32_types_unchanged(tiny_onnx, converted):
    _, _, model, _ = converted
    assert precision.io_signature(model) == precision.io_signature(onnx.load(str(tiny_onnx)))
    assert [v.name for v in model.graph.input] == ["image", "w_texture", "w_style"]
    assert [v.name for v in model.graph.output] == ["enhanced", "codes"]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*model.graph.input, model.graph.output[0]])
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_fp16_graph_has_types_but_no_dim_names(converted):
    _, _, model, _ = converted
    typed = [v for v in model.graph.value_info if v.type.tensor_type.elem_type]
    assert len(typed) > 100  # element types re-inferred: the FP16/FP32 report and the runtime need them
    assert not any(d.HasField("dim_param") for v in model.graph.value_info for d in v.type.tensor_type.shape.dim)


def test_nearest_code_lookup_is_fp32(converted):
    _, _, _, ix = converted
    argmins = [n for n in ix.nodes if n.op_type == "ArgMin"]
    assert len(argmins) == 1
    chain, stack = [], [ix.producer[argmins[0].input[0]]]  # distance: Add(MatMul(z, -2e^T), ||e||^2)
    while stack:
        chain.append(stack.pop())
        if chain[-1].op_type == "Add":
            stack += [ix.producer[i] for i in chain[-1].input if i in ix.producer]
    assert [n.op_type for n in chain] == ["Add", "MatMul"]
    assert ix.elem_type[argmins[0].input[0]] == onnx.TensorProto.FLOAT
    assert all(fp32_only(ix, n) for n in chain)
    gathers = [n for n in ix.consumers[argmins[0].output[0]] if n.op_type == "Gather"]
    assert gathers and all(fp32_only(ix, n) for n in gathers)  # codebook rows gathered at full precision


def test_normalisation_and_statistics_are_fp32(converted):
    _, _, _, ix = converted
    norms = [n for n in ix.nodes if n.op_type in NORM_OPS]
    stats = [n for n in ix.nodes if n.op_type in ("ReduceMean", "Sqrt")]
    assert norms and len(stats) >= 4  # GroupNorms (as InstanceNormalization or GroupNormalization), Swin LayerNorms, IFT mean/std
    assert all(fp32_only(ix, n) for n in norms + stats)


def test_most_conv_and_matmul_run_in_fp16(converted):
    _, report, _, ix = converted
    assert fp16_share(ix, "Conv") > 0.95
    # every Swin linear (Gemm) and attention product (MatMul): all but the one codebook-distance MatMul
    products = [n for n in ix.nodes if n.op_type in ("MatMul", "Gemm")]
    assert sum(onnx.TensorProto.FLOAT16 in float_types(ix, n) for n in products) == len(products) - 1
    assert report["fp16_by_op_type"]["Gemm"] == sum(n.op_type == "Gemm" for n in ix.nodes)
    assert report["fp16_by_op_type"]["Conv"] == sum(n.op_type == "Conv" for n in ix.nodes)


def test_report_lists_kept_nodes_with_reasons(converted):
    out, report, _, _ = converted
    kept = {k["name"]: k for k in report["fp32_nodes"]}
    argmin = [k for k in kept.values() if k["op_type"] == "ArgMin"]
    assert argmin and argmin[0]["reasons"][0] == "lookup"
    assert report["fp32_by_reason"]["lookup"]["MatMul"] == 1
    assert set(report["fp32_by_reason"]["normalisation"]) >= {"LayerNormalization", "ReduceMean", "Sqrt"}
    assert not report["not_fp32_as_asked"]
    assert report["smoke"]["nonfinite"] == 0
    summary = out.with_suffix(".precision.md").read_text()
    assert "| lookup |" in summary and "| normalisation |" in summary


def test_fp16_graph_runs_close_to_fp32(tiny_onnx, converted):
    out = converted[0]
    image = fidelity.synthetic_lowlight(1, (80, 112), seed=7)[0]  # not a calibration image, not a multiple of 32
    ref, test = run(tiny_onnx, image), run(out, image)
    assert test[0].shape == ref[0].shape == (1, 3, 80, 112)
    assert fidelity.nonfinite_count(test[0]) == 0
    assert fidelity.psnr(ref[0], test[0]) > 40
    assert fidelity.code_agreement(ref[1], test[1]) > 0.98


def test_keep_fp32_conv_keeps_every_conv_fp32(tiny_onnx, tmp_path):
    out = tmp_path / "conv32.onnx"
    assert precision.main([str(tiny_onnx), "--out", str(out), "--keep-fp32", "Conv", "--report", str(tmp_path / "r.json"), *FAST]) == 0
    ix = precision.index_graph(onnx.load(str(out)))
    assert fp16_share(ix, "Conv") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fp32_by_reason"]["user"]["Conv"] == sum(n.op_type == "Conv" for n in ix.nodes)
    assert (tmp_path / "r.md").exists()


def test_onnxconverter_backend_keeps_the_islands(tiny_onnx, tmp_path):
    need_backend("onnxconverter")
    out = tmp_path / "occ.onnx"
    precision.convert_file(tiny_onnx, out, backend="onnxconverter", calib_count=1, calib_size=96, log=quiet)
    ix = precision.index_graph(onnx.load(str(out)))
    assert all(fp32_only(ix, n) for n in ix.nodes if n.op_type in NORM_OPS | {"ArgMin"})
    assert fp16_share(ix, "Conv") > 0.95
    image = fidelity.synthetic_lowlight(1, (64, 96), seed=3)[0]
    assert fidelity.psnr(run(tiny_onnx, image)[0], run(out, image)[0]) > 40


def test_overflow_rule_keeps_large_activations_fp32(tiny_onnx):
    ix = precision.index_graph(onnx.load(str(tiny_onnx)))
    conv = next(n for n in ix.nodes if n.op_type == "Conv" and n.output[0] in ix.consumers)
    reasons = precision.classify(ix, {conv.output[0]: 1e5}, data_max=512)
    assert reasons[conv.name] == ["overflow"]
    assert all("overflow" in reasons[c.name] for c in ix.consumers[conv.output[0]] if ix.computes_float(c))


# ----------------------------------------------------------------------------------------------- errors


def test_backend_choice_without_modelopt(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", None)  # makes the import fail
    assert precision.pick_backend("auto") == "onnxconverter"
    with pytest.raises(precision.PrecisionError, match="nvidia-modelopt"):
        precision.pick_backend("autocast")


def test_missing_input_fails_cleanly(tmp_path):
    cmd = [sys.executable, "-m", "export.precision", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x.onnx")]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "input model not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_existing_output_needs_overwrite(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"keep me")
    assert precision.main([str(tiny_onnx), "--out", str(out), *FAST]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_calib_folder(tiny_onnx, tmp_path, capsys, make):
    calib = tmp_path / "calib"
    if make == "empty":
        calib.mkdir()
    elif make == "file":
        calib.write_text("not a folder")
    assert precision.main([str(tiny_onnx), "--out", str(tmp_path / "o.onnx"), "--calib", str(calib)]) == 2
    assert "--calib" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_keep_fp32_token(tiny_onnx, tmp_path, capsys):
    assert precision.main([str(tiny_onnx), "--out", str(tmp_path / "o.onnx"), "--keep-fp32", "NoSuchOp", *FAST]) == 2
    assert "matches no op type or node name" in capsys.readouterr().err


def test_not_an_onnx_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    assert precision.main([str(bad), "--out", str(tmp_path / "o.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- metrics


def test_psnr_and_8bit_error():
    a = np.zeros((1, 3, 8, 8), np.float32)
    assert fidelity.psnr(a, a) == math.inf
    assert fidelity.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert fidelity.max_8bit_error(a, a + 0.1) == 26  # round(25.5)
    assert fidelity.max_8bit_error(a, np.full_like(a, np.nan)) == 255


def test_ssim_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.random((64, 64, 3)).astype(np.float32)
    assert fidelity.ssim(x, x) == pytest.approx(1.0)
    assert fidelity.ssim(x, x * 0.5 + 0.25) < fidelity.ssim(x, x + rng.normal(0, 0.01, x.shape)) < 1.0
    assert fidelity.ssim(x.transpose(2, 0, 1)[None], x) == pytest.approx(1.0)  # NCHW and HWC alike


def test_code_agreement_and_nonfinite():
    assert fidelity.code_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    assert fidelity.nonfinite_count(np.array([0.0, np.nan, np.inf, -np.inf])) == 3
