"""ONNX export (export/onnx.py, export/check.py): exactness against the original, the graph contract,
TensorRT readiness, and the command's error handling.

The official-size graph is exported once per session from the golden checkpoint (about a minute);
everything else uses the tiny preset.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import codeenhance
from codeenhance import CheckpointError
from export import check as trt_check
from export import onnx as onnx_export
from export.verify import Case, ort_session, run_onnx, verify_onnx

ATOL = 2e-4
SCATTER_OPS = {"ScatterElements", "ScatterND"}


def run_cli(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# ---------------------------------------------------------------------------------------------- official size


@pytest.fixture(scope="session")
def golden_export(golden_ckpt, tmp_path_factory):
    """The command as a user runs it (verification on), with codes, once per session (about two minutes)."""
    out = tmp_path_factory.mktemp("golden") / "codeenhance.onnx"
    rc, stdout, stderr = run_cli(onnx_export.main, ["--ckpt", golden_ckpt, "--out", out, "--with-codes"])
    return rc, stdout, stderr, out


@pytest.fixture(scope="session")
def golden_onnx(golden_export):
    rc, stdout, stderr, out = golden_export
    if rc != 0:
        pytest.fail(f"python -m export.onnx failed with {rc}:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def golden_graph(golden_onnx) -> onnx.ModelProto:
    return onnx.load(str(golden_onnx))


@pytest.fixture(scope="session")
def golden_session(golden_onnx):
    return ort_session(golden_onnx)


def golden_inputs(cases: dict, *indices: int) -> dict[str, np.ndarray]:
    weights = np.stack([cases[f"case{i}_w"] for i in indices])
    return {
        "image": np.concatenate([cases[f"case{i}_input"] for i in indices]),
        "w_texture": np.ascontiguousarray(weights[:, 0]),
        "w_style": np.ascontiguousarray(weights[:, 1]),
    }


@pytest.mark.parametrize("index", range(4))
def test_golden_case_matches_the_original(golden_session, golden_cases, index):
    enhanced, codes = run_onnx(golden_session, golden_inputs(golden_cases, index))
    expected = np.clip(golden_cases[f"case{index}_output"], 0.0, 1.0)
    assert enhanced.shape == expected.shape
    assert np.abs(enhanced - expected).max() <= ATOL
    np.testing.assert_array_equal(codes, golden_cases[f"case{index}_indices"].reshape(-1))


def test_golden_batch_of_two_with_per_image_weights(golden_session, golden_cases):
    enhanced, codes = run_onnx(golden_session, golden_inputs(golden_cases, 2, 3))
    for row, index in enumerate((2, 3)):
        expected = np.clip(golden_cases[f"case{index}_output"][0], 0.0, 1.0)
        assert np.abs(enhanced[row] - expected).max() <= ATOL, f"image {row} (case{index})"
    # Same image, different weights: the graph must apply each image's own weights.
    assert np.abs(enhanced[0] - enhanced[1]).max() > 0.05
    expected_codes = np.concatenate([golden_cases["case2_indices"], golden_cases["case3_indices"]]).reshape(-1)
    np.testing.assert_array_equal(codes, expected_codes)


def test_command_prints_histogram_check_and_verification(golden_export):
    rc, stdout, stderr, out = golden_export
    assert rc == 0, stderr
    assert sorted(os.listdir(out.parent)) == [out.name]  # no temp file left next to it
    counted = re.search(r"opset 18, (\d+) nodes, \d+ op types", stdout)
    assert counted and int(counted.group(1)) <= 2500
    assert re.search(r"op histogram: (\w+ \d+, )+", stdout)
    assert "TensorRT ONNX parser compatibility: OK" in stdout
    # rc 0 means ONNX Runtime matched PyTorch within 2e-4 on these sizes (only near-tie code swaps allowed).
    for size in ("1x3x77x150", "2x3x64x96", "1x3x13x40"):
        assert size in stdout
    assert "verification passed" in stdout
    assert f"wrote {out}" in stdout


def test_golden_graph_runs_any_size_and_batch(golden_onnx, golden_model):
    cases = (
        Case(1, 1, 1, (1.0,), (1.0,), "smallest image"),
        Case(3, 40, 13, (1.0, 0.5, 0.0), (1.0, 1.5, 2.0), "W < 32, batch 3"),
        Case(1, 32, 32, (1.0,), (1.0,), "an exact multiple of 32 is still padded"),
    )
    report = verify_onnx(golden_onnx, golden_model, cases=cases)
    assert report["passed"], report
    assert report["max_abs_same_codes"] <= ATOL
    assert all(case["flips"] == case["near_ties"] for case in report["cases"])


def test_check_command_on_the_exported_graph(golden_onnx):
    rc, stdout, _ = run_cli(trt_check.main, [golden_onnx])
    assert rc == 0
    assert "op histogram: " in stdout and "Conv" in stdout and "PROBLEM" not in stdout


def test_golden_graph_is_small_and_free_of_forbidden_ops(golden_graph):
    assert not op_types(golden_graph) & trt_check.FORBIDDEN_OPS
    assert len(golden_graph.graph.node) <= 2500


def test_golden_graph_passes_the_tensorrt_check(golden_graph):
    report = trt_check.check_model(golden_graph)
    assert report.ok, report.summary()
    assert report.warnings == [], report.warnings  # int32 codes, opset 18: nothing TensorRT would warn about
    assert report.node_count == len(golden_graph.graph.node)


def test_layer_norm_stays_one_node_per_layer(golden_graph):
    config = codeenhance.OFFICIAL
    layer_norms = sum(n.op_type == "LayerNormalization" for n in golden_graph.graph.node)
    assert layer_norms == 2 * config.swin_groups * config.swin_depth


def test_nearest_code_lookup_is_one_matmul_argmin_gather_on_folded_constants(golden_graph, golden_model):
    graph = golden_graph.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    codebook = golden_model.quantizer.codebook().detach()

    # ArgMin(Add(MatMul(z, -2 e^T), ||e||^2)): one P x K tensor, constants folded, no ||z||^2 term.
    (argmin,) = [n for n in graph.node if n.op_type == "ArgMin"]
    distance = producers[argmin.input[0]]
    assert distance.op_type == "Add"
    (sq_norm,) = [constants[i] for i in distance.input if i in constants]
    np.testing.assert_array_equal(sq_norm, codebook.pow(2).sum(dim=1).numpy())
    (matmul,) = [producers[i] for i in distance.input if i not in constants]
    assert matmul.op_type == "MatMul"
    np.testing.assert_array_equal(constants[matmul.input[1]], (-2.0 * codebook).t().numpy())
    assert producers[matmul.input[0]].op_type in ("Reshape", "Transpose")  # z itself, not a norm of it

    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in constants]
    assert len(gathers) == 1, "only the codebook rows are gathered from a constant (position bias is folded)"
    assert gathers[0].input[1] == argmin.output[0]
    np.testing.assert_array_equal(constants[gathers[0].input[0]], codebook.numpy())


def test_relative_position_bias_is_folded(golden_graph):
    window, heads = codeenhance.OFFICIAL.window_size, codeenhance.OFFICIAL.swin_heads
    table_shape = ((2 * window - 1) ** 2, heads)
    assert not [t.name for t in golden_graph.graph.initializer if tuple(t.dims) == table_shape]


def test_golden_metadata(golden_graph, golden_ckpt):
    props = {p.key: p.value for p in golden_graph.metadata_props}
    assert props["checkpoint_sha256"] == hashlib.sha256(golden_ckpt.read_bytes()).hexdigest()
    assert json.loads(props["model_config"]) == codeenhance.OFFICIAL.to_dict()
    assert props["toolkit_version"] == codeenhance.__version__
    assert props["opset"] == "18" == str(trt_check.onnx_opset(golden_graph))
    assert "(H//32+1)*32" in props["padding"]
    assert "[0,1]" in props["input_range"]
    assert props["lookup"] == "gather"
    assert props["exporter_fingerprint"] == onnx_export.exporter_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", props["exporter_fingerprint"])


def test_golden_io_contract(golden_graph, golden_session, golden_cases):
    inputs = {v.name: v for v in golden_graph.graph.input}
    outputs = {v.name: v for v in golden_graph.graph.output}
    assert list(inputs) == ["image", "w_texture", "w_style"]
    assert list(outputs) == ["enhanced", "codes"]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in inputs.values())
    assert dims(inputs["image"]) == ["batch", 3, "height", "width"]
    assert dims(inputs["w_texture"]) == dims(inputs["w_style"]) == ["batch"]
    assert outputs["enhanced"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(outputs["enhanced"]) == ["batch", 3, "height", "width"]
    assert outputs["codes"].type.tensor_type.elem_type == onnx.TensorProto.INT32

    _, codes = golden_session.run(None, golden_inputs(golden_cases, 2))
    assert codes.dtype == np.int32
    assert codes.shape == golden_cases["case2_indices"].shape  # [1, 1, Hp/4, Wp/4]


def test_intermediate_shapes_carry_no_dim_names(golden_graph):
    """Named derived dims make ONNX Runtime keep every Swin block's freed buffers (export/dims.py): +1.2 GB at
    1024x1024. Ranks and fixed sizes stay for optimizers and TensorRT."""
    intermediate = golden_graph.graph.value_info
    assert len(intermediate) > 1000
    named = [v.name for v in intermediate if any(d.HasField("dim_param") for d in v.type.tensor_type.shape.dim)]
    assert named == []
    swin_hidden = [v for v in intermediate if dims(v)[-1:] == [1024] and len(dims(v)) == 3]
    assert swin_hidden, "the MLP hidden tensors lost their rank and fixed width"


# ------------------------------------------------------------------------------- one-hot baseline, tiny preset


@pytest.fixture(scope="session")
def tiny_onehot(tiny_model, tmp_path_factory):
    return onnx_export.export_onnx(tiny_model, tmp_path_factory.mktemp("onehot") / "onehot.onnx", lookup="onehot")


def test_onehot_baseline_is_a_scatter_graph(tiny_onehot):
    graph = onnx.load(str(tiny_onehot))
    assert op_types(graph) & SCATTER_OPS
    assert [o.name for o in graph.graph.output] == ["enhanced"]
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["lookup"] == "onehot"
    assert props["checkpoint_sha256"] == onnx_export.IN_MEMORY
    strict = trt_check.check_model(graph)
    assert not strict.ok and any("forbidden by the graph contract" in p for p in strict.problems)
    assert trt_check.check_model(graph, forbidden=trt_check.FORBIDDEN_OPS - SCATTER_OPS).ok


def test_onehot_baseline_computes_the_same_as_pytorch(tiny_onehot, tiny_model):
    report = verify_onnx(tiny_onehot, tiny_model)
    assert report["passed"], report
    assert report["max_abs"] <= ATOL
    # The graph has no codes output: verification reads the ArgMin of the same graph.
    assert report["min_code_agreement"] == 1.0


def test_rejected_graph_keeps_the_previous_file(tiny_onehot, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous, good model")
    scatter_graph = onnx.load(str(tiny_onehot))
    gate = onnx_export.cli_validator(verify=False, atol=ATOL, threads=2, lookup="gather")
    with pytest.raises(onnx_export.GraphRejected, match="TensorRT compatibility check"):
        onnx_export.save_onnx(scatter_graph, out, overwrite=True, validate=gate)
    assert out.read_bytes() == b"the previous, good model"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


# --------------------------------------------------------------------------------- errors before any tracing


def test_missing_checkpoint(tmp_path):
    rc, _, stderr = run_cli(onnx_export.main, ["--ckpt", tmp_path / "nope.pth", "--out", tmp_path / "m.onnx"])
    assert rc == 2
    assert "checkpoint not found" in stderr
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint" * 10, None],
    ids=["corrupt file", "another network"],
)
def test_bad_checkpoint_gives_the_loader_message(tmp_path, content):
    ckpt = tmp_path / "bad.pth"
    if content is None:
        torch.save({"params": {"conv.weight": torch.zeros(2, 2)}}, ckpt)
    else:
        ckpt.write_bytes(content)
    with pytest.raises(CheckpointError) as expected:
        codeenhance.load_model(ckpt)
    rc, _, stderr = run_cli(onnx_export.main, ["--ckpt", ckpt, "--out", tmp_path / "m.onnx"])
    assert rc == 2
    assert str(expected.value) in stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.pth"]


def test_existing_output_is_refused_without_overwrite(tiny_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    rc, _, stderr = run_cli(onnx_export.main, ["--ckpt", tiny_ckpt, "--out", out])
    assert rc == 2
    assert "exists" in stderr and "--overwrite" in stderr
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("opset", [17, 22])
def test_opset_out_of_range(tiny_ckpt, tmp_path, opset):
    rc, _, stderr = run_cli(onnx_export.main, ["--ckpt", tiny_ckpt, "--out", tmp_path / "m.onnx", "--opset", opset])
    assert rc == 2
    assert f"opset {opset} is out of range" in stderr and "18..21" in stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_unwritable_output_path(tiny_ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc, _, stderr = run_cli(onnx_export.main, ["--ckpt", tiny_ckpt, "--out", blocker / "m.onnx"])
    assert rc == 2
    assert "cannot write" in stderr


def test_output_path_that_is_a_folder(tiny_ckpt, tmp_path):
    rc, _, stderr = run_cli(onnx_export.main, ["--ckpt", tiny_ckpt, "--out", tmp_path])
    assert rc == 2
    assert "is a directory" in stderr


# ------------------------------------------------------------------------------------------ checker rules


def problem_graph() -> onnx.ModelProto:
    """A small graph that breaks each TensorRT rule once."""
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    axes = h.make_tensor_value_info("axes", onnx.TensorProto.INT64, [1])
    nodes = [
        h.make_node("ReduceMean", ["x", "axes"], ["mean"], name="reduce_runtime_axes"),
        h.make_node("Cast", ["mean"], ["mean64"], to=onnx.TensorProto.DOUBLE, name="to_double"),
        h.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
        h.make_node("Det", ["x"], ["det"], name="det"),
        h.make_node("FusedThing", ["x"], ["fused"], domain="com.example", name="custom"),
    ]
    outputs = [
        h.make_tensor_value_info("mean64", onnx.TensorProto.DOUBLE, None),
        h.make_tensor_value_info("nz", onnx.TensorProto.INT64, None),
        h.make_tensor_value_info("det", onnx.TensorProto.FLOAT, None),
        h.make_tensor_value_info("fused", onnx.TensorProto.FLOAT, None),
    ]
    graph = h.make_graph(nodes, "problems", [x, axes], outputs)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.example", 1)])


def test_check_finds_each_problem(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(problem_graph(), str(path))
    rc, stdout, _ = run_cli(trt_check.main, [path])
    assert rc == 1
    assert "reduce_runtime_axes: axes input 'axes' is computed at run time" in stdout
    assert "float64 tensors are not supported" in stdout
    assert "NonZero nonzero: forbidden by the graph contract" in stdout
    assert "Det det: not in the TensorRT ONNX parser's operator table" in stdout
    assert "custom domain 'com.example'" in stdout
    assert "output 'nz' is INT64" in stdout  # a warning, reported alongside
    assert "5 problem(s)" in stdout


def test_check_allow_accepts_only_forbidden_ops(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(problem_graph(), str(path))
    rc, stdout, _ = run_cli(trt_check.main, [path, "--allow", "NonZero"])
    assert rc == 1 and "NonZero nonzero" not in stdout and "4 problem(s)" in stdout
    with pytest.raises(SystemExit):
        run_cli(trt_check.main, [path, "--allow", "Conv"])


def test_check_missing_file(tmp_path):
    rc, _, stderr = run_cli(trt_check.main, [tmp_path / "none.onnx"])
    assert rc == 2 and "not found" in stderr
