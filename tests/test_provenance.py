"""One provenance record (contract.provenance): its carriers, the staleness check, and one record followed from a
checkpoint through the graph, an OpenVINO IR, an engine sidecar and a Triton config."""
from __future__ import annotations

import pytest

from contract.errors import BadArtifactError
from contract.files import file_sha256
from contract.provenance import (ENVIRONMENT, Environment, Expect, Kind, Provenance, check_fresh, read_provenance,
                                 runs_on_cpu, same_release, stale_reasons)

RECORD = Provenance(kind=Kind.AOTI, checkpoint_sha256="a" * 64, source_sha256="b" * 64, exporter_fingerprint="0123456789ab",
                    model_config={"channels": [32, 32, 64], "code_dim": 32}, precision="fp32",
                    shapes={"image": {"max": [4, 3, 512, 512]}}, payload_sha256="c" * 64,
                    built_for=Environment(torch_version="2.13.0+cpu", device="cpu", cpu_capability="AVX2"))


def test_the_record_round_trips_through_both_carriers():
    assert Provenance.from_json(RECORD.to_json()) == RECORD
    strings = RECORD.to_strings()
    assert all(isinstance(v, str) for v in strings.values())
    assert Provenance.from_strings(strings) == RECORD
    # the environment facts sit at the top level, under the same names in every carrier
    assert strings["torch_version"] == "2.13.0+cpu" and "built_for" not in strings
    # other keys of a carrier are beside the record, not in it
    assert Provenance.from_json({**RECORD.to_json(), "compile_seconds": 3}) == RECORD
    assert set(RECORD.to_json()) <= set(Provenance.keys())


def test_check_fresh_names_every_mismatch_and_how_to_rebuild():
    assert check_fresh(RECORD, "m.pt2", "rebuild it", device="cpu", checkpoint_sha256="a" * 64) is RECORD
    with pytest.raises(BadArtifactError) as err:
        check_fresh(RECORD, "m.pt2", "rebuild it with X", what="package",
                    device="cuda",
                    torch_version=Expect("2.14.0", same_release, "tied to the torch release"),
                    checkpoint_sha256=Expect("d" * 64, label="checkpoint"),
                    compute_capability=None)  # not asked: skipped
    message = str(err.value)
    assert message.startswith("stale package m.pt2: device is 'cpu' in its record but 'cuda' here; ")
    assert "torch_version is '2.13.0+cpu' in its record but '2.14.0' here (tied to the torch release)" in message
    assert "made from a different checkpoint (sha256 aaaaaaaaaaaa... recorded, dddddddddddd... here)" in message
    assert message.endswith(". Rebuild it with X.")
    # a field the record does not hold is a mismatch, not a pass
    assert stale_reasons(Provenance(kind=Kind.ENGINE), tensorrt_version="10.16") == [
        "tensorrt_version is None in its record but '10.16' here"]


@pytest.mark.parametrize("recorded, here, ok", [
    ("2.13.0+cpu", "2.13.0", True), ("2.13.0", "2.13.1", False),
])
def test_same_release(recorded, here, ok):
    assert same_release(recorded, here) is ok


@pytest.mark.parametrize("recorded, here, ok", [
    ("AVX2", "AVX512", True), ("AVX512", "AVX2", False), ("DEFAULT", "AVX2", True), ("NEON", "AVX2", False),
])
def test_cpu_kernels_run_on_the_same_or_a_later_capability(recorded, here, ok):
    assert runs_on_cpu(recorded, here) is ok


def test_one_record_from_checkpoint_to_graph_ir_engine_and_triton_config(tiny_ckpt, tiny_onnx, tmp_path):
    """Each artifact carries the record under the same names: the checkpoint is carried along, and each one's
    source is the file it was made from."""
    checkpoint = file_sha256(tiny_ckpt)
    graph = read_provenance(tiny_onnx)
    assert (graph.kind, graph.checkpoint_sha256, graph.source_sha256, graph.precision) == (
        Kind.ONNX, checkpoint, checkpoint, "fp32")
    assert graph.model_config["codebook_size"] == 64 and len(graph.exporter_fingerprint) == 12

    from contract.engine_sidecar import GpuInfo, write_sidecar
    from export.trt_plan import BuildPlan

    plan = BuildPlan.create(tiny_onnx, trt_version="10.16.0.72", gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0"),
                            out=tmp_path / "m.plan")
    plan.engine_path.write_bytes(b"not an engine")
    write_sidecar(plan.engine_path, plan.sidecar())
    engine = read_provenance(plan.engine_path)
    assert (engine.kind, engine.checkpoint_sha256, engine.source_sha256) == (Kind.ENGINE, checkpoint, file_sha256(tiny_onnx))
    assert engine.built_for == Environment(tensorrt_version="10.16.0.72", gpu_name="NVIDIA H100 80GB HBM3",
                                           compute_capability="9.0")
    assert engine.shapes["image"]["max"][0] >= 1

    pytest.importorskip("openvino", reason="OpenVINO not installed (pip install 'codeenhance-deploy[openvino]')")
    from export.openvino import export_ir

    export_ir(tiny_onnx, tmp_path / "m.xml", precision="fp32")
    ir = read_provenance(tmp_path / "m.xml")
    assert (ir.kind, ir.checkpoint_sha256, ir.source_sha256, ir.precision) == (
        Kind.OPENVINO_IR, checkpoint, file_sha256(tiny_onnx), "fp32")
    assert ir.payload_sha256 and ir.payload_sha256 != "0" * 64  # sealed after writing

    from export.triton import PYTHON_MODEL, write_repository

    write_repository(tiny_onnx, tmp_path / "repo")
    config = (tmp_path / "repo" / PYTHON_MODEL / "config.pbtxt").read_text()
    assert f'key: "checkpoint_sha256" value: {{ string_value: "{checkpoint}" }}' in config
    assert f'key: "source_sha256" value: {{ string_value: "{file_sha256(tiny_onnx)}" }}' in config
    assert not set(ENVIRONMENT) & {k for k in graph.to_json()}  # a graph runs anywhere: no environment facts


def test_a_cached_openvino_ir_from_another_writer_is_rebuilt(tiny_onnx, tmp_path, monkeypatch):
    """The cache is keyed by the writer too; an IR whose record names another writer (renamed into the key's
    place, as a stale copy would be) fails the staleness check and is written again."""
    pytest.importorskip("openvino", reason="OpenVINO not installed (pip install 'codeenhance-deploy[openvino]')")
    import runtime.openvino_backend
    import runtime.openvino_ir
    from runtime.openvino_backend import OpenVINOBackend

    cache = tmp_path / "cache"
    with OpenVINOBackend(tiny_onnx, cache_dir=cache) as first:
        old = first.ir
    for module in (runtime.openvino_backend, runtime.openvino_ir):  # as after an upgrade of the writer
        monkeypatch.setattr(module, "writer_fingerprint", lambda version: "another writer")
    with OpenVINOBackend(tiny_onnx, cache_dir=cache) as second:  # a new key: a new IR, the old one kept
        new = second.ir
    assert new != old and old.is_file()
    for suffix in (".xml", ".bin"):  # the old IR (recorded with the old writer) where the new key points
        new.with_suffix(suffix).write_bytes(old.with_suffix(suffix).read_bytes())
    with OpenVINOBackend(tiny_onnx, cache_dir=cache) as third:
        assert any("rebuilt" in note and "exporter_fingerprint" in note for note in third.cache_notes), third.cache_notes
        assert read_provenance(third.ir).exporter_fingerprint == "another writer"
