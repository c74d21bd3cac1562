"""runtime/tensorrt_backend.py: the pure-Python parts everywhere (dtype mapping, profile limits, buffer reuse,
sidecar staleness, CUDA error checks, the missing-TensorRT message), and a real engine where TensorRT and a GPU
exist (skipped otherwise)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from contract.engine_sidecar import GpuInfo, write_sidecar
from contract.errors import BadArtifactError
from runtime import BackendError, Enhancer
from runtime.tensorrt_backend import (
    DeviceBuffers,
    TensorRTBackend,
    cuda_check,
    cuda_index,
    numpy_dtype,
    profile_limits,
    verify_sidecar,
)

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
TRT_VERSION = "10.16.0.72"


@pytest.mark.parametrize("name, dtype", [("FLOAT", np.float32), ("HALF", np.float16), ("INT32", np.int32),
                                         ("INT64", np.int64), ("BOOL", np.bool_), ("UINT8", np.uint8)])
def test_numpy_dtype_from_tensorrt_names(name, dtype):
    assert numpy_dtype(name) == dtype
    assert numpy_dtype(SimpleNamespace(name=name)) == dtype  # a tensorrt.DataType member has .name
    assert numpy_dtype(f"DataType.{name}") == dtype  # and prints as DataType.NAME


def test_numpy_dtype_refuses_types_without_a_numpy_twin():
    with pytest.raises(BackendError, match="BF16 has no numpy equivalent"):
        numpy_dtype("BF16")


def test_profile_limits():
    limits = profile_limits((1, 3, 32, 32), (2, 3, 96, 128))
    assert limits == {"min_batch": 1, "max_batch": 2, "min_hw": (32, 32), "max_hw": (96, 128)}
    with pytest.raises(BackendError, match="must be 4-D"):
        profile_limits((1, 32, 32), (1, 96, 128))


class HostMemory:
    """Allocator over numpy arrays (standing in for cudaMalloc/cudaFree), remembering every call."""

    def __init__(self):
        self.blocks, self.allocations, self.frees = {}, [], []

    def allocate(self, nbytes: int) -> int:
        block = np.empty(nbytes, np.uint8)
        address = block.ctypes.data
        self.blocks[address] = block
        self.allocations.append(nbytes)
        return address

    def free(self, address: int) -> None:
        del self.blocks[address]  # KeyError on a double free or a foreign address
        self.frees.append(address)


def test_device_spellings_of_the_cli_and_harness_name_one_index():
    assert [cuda_index(d) for d in (0, 2, "2", "cuda", "cuda:1", "CUDA:3")] == [0, 2, 2, 0, 1, 3]
    with pytest.raises(BackendError, match="'gpu0' is not a CUDA device"):
        TensorRTBackend("model.plan", device="gpu0")


def test_device_buffers_are_reused_and_grow_only_when_needed():
    memory = HostMemory()
    buffers = DeviceBuffers(memory.allocate, memory.free)
    first = buffers.get("image", 3 * 64 * 64 * 4)
    assert buffers.get("image", 3 * 64 * 64 * 4) == first  # same shape: same buffer
    assert buffers.get("image", 3 * 32 * 32 * 4) == first  # smaller: still the same
    out = buffers.get("enhanced", 3 * 64 * 64 * 4)
    assert out != first and memory.allocations == [49152, 49152]
    bigger = buffers.get("image", 2 * 3 * 64 * 64 * 4)
    assert memory.frees == [first] and memory.allocations[-1] == 98304 and bigger in memory.blocks
    assert buffers.get("codes", 0) in memory.blocks  # zero bytes still gets a valid (1-byte) allocation
    buffers.release()
    assert memory.blocks == {} and buffers.buffers == {}


def test_cuda_check_unpacks_results_and_raises_on_errors():
    assert cuda_check((0, 1234)) == 1234
    assert cuda_check((0,)) is None
    assert cuda_check((0, "a", "b")) == ("a", "b")
    with pytest.raises(BackendError, match="CUDA error 2"):
        cuda_check((2, None))


def make_engine(folder, sidecar: dict | None):
    engine = folder / "model.plan"
    engine.write_bytes(b"serialized engine")
    if sidecar is not None:
        write_sidecar(engine, sidecar)
    return engine


def test_sidecar_for_this_machine_is_accepted(tmp_path):
    engine = make_engine(tmp_path, {"tensorrt_version": TRT_VERSION, "gpu_name": H100.name, "compute_capability": "9.0"})
    assert verify_sidecar(engine, TRT_VERSION, H100)["gpu_name"] == H100.name


@pytest.mark.parametrize("built, message", [
    ({"tensorrt_version": "10.12.0.36"}, "tensorrt_version is '10.12.0.36' in its record but '10.16.0.72' here"),
    ({"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}, "gpu_name is 'NVIDIA L4'.*compute_capability is '8.9'"),
])
def test_stale_engines_are_refused_with_the_reason(tmp_path, built, message):
    sidecar = {"tensorrt_version": TRT_VERSION, "gpu_name": H100.name, "compute_capability": "9.0", **built}
    engine = make_engine(tmp_path, sidecar)
    with pytest.raises(BadArtifactError, match=f"stale TensorRT engine .*{message}.*built for"):
        verify_sidecar(engine, TRT_VERSION, H100)


def test_engines_without_a_sidecar_are_accepted_and_a_broken_one_is_not(tmp_path):
    engine = make_engine(tmp_path, None)  # e.g. built with plain trtexec
    assert verify_sidecar(engine, TRT_VERSION, H100) is None
    (tmp_path / "model.plan.json").write_text("{ truncated")
    with pytest.raises(BadArtifactError, match="unreadable"):
        verify_sidecar(engine, TRT_VERSION, H100)


def test_without_tensorrt_the_error_says_how_to_install(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = make_engine(tmp_path, None)
    backend = TensorRTBackend(engine)  # constructing needs nothing; loading needs TensorRT
    with pytest.raises(BackendError, match=r'TensorRT is not installed.*pip install "codeenhance-deploy\[tensorrt\]"'):
        Enhancer(engine)
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        backend.load()


# --- a real engine (TensorRT and a GPU only) ---


@pytest.fixture(scope="module")
def tiny_engine(tiny_ckpt, tmp_path_factory):
    trt = pytest.importorskip("tensorrt", reason='needs TensorRT: pip install "codeenhance-deploy[tensorrt]"')
    from contract.engine_sidecar import detect_gpu

    if detect_gpu() is None:
        pytest.skip("needs a CUDA GPU")
    from export import tensorrt as build_cli
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("trt")
    onnx = export_onnx(tiny_ckpt, folder / "tiny.onnx", with_codes=True)
    engine = folder / "tiny.plan"
    rc = build_cli.main([str(onnx), "--out", str(engine), "--min", "16x16", "--opt", "64x64", "--max", "96x128",
                         "--max-batch", "2", "--opt-level", "1"])
    assert rc == 0
    return trt, engine, onnx


def test_real_engine_matches_onnxruntime_and_reuses_buffers(tiny_engine):
    _, engine, onnx = tiny_engine
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    with TensorRTBackend(engine) as trt_backend, OnnxRuntimeBackend(onnx) as ort_backend:
        info = trt_backend.describe()
        assert (info.min_hw, info.max_hw, info.max_batch) == ((16, 16), (96, 128), 2)
        assert info.extra["sidecar"]["tensorrt_version"] == info.extra["tensorrt"]
        rng = np.random.default_rng(0)
        x = rng.random((2, 3, 40, 56), dtype=np.float32)
        weights = (np.array([1.0, 0.5], np.float32), np.array([1.0, 2.0], np.float32))
        got, want = trt_backend.infer(x, *weights), ort_backend.infer(x, *weights)
        assert got.enhanced.shape == x.shape and got.codes.shape == want.codes.shape
        agree = got.codes == want.codes
        assert agree.mean() > 0.9
        if agree.all():  # TF32 convolutions: close, not equal
            assert np.abs(got.enhanced - want.enhanced).max() < 0.02
        buffers = dict(trt_backend.buffers.buffers)
        trt_backend.infer(x[:1], weights[0][:1], weights[1][:1])
        assert trt_backend.buffers.buffers == buffers  # smaller: no new allocation
        trt_backend.infer(rng.random((2, 3, 96, 128), dtype=np.float32), *weights)
        assert trt_backend.buffers.buffers["image"][1] > buffers["image"][1]
        with pytest.raises(ValueError, match="exceeds the largest supported size 96x128"):
            trt_backend.infer(rng.random((1, 3, 97, 64), dtype=np.float32), weights[0][:1], weights[1][:1])


def test_real_engine_through_the_enhancer_pads_and_tiles(tiny_engine):
    _, engine, _ = tiny_engine
    with Enhancer(engine, batch=2) as enhancer:
        small = enhancer.enhance(np.full((5, 7, 3), 40, np.uint8))  # below the 16x16 minimum: padded
        large = enhancer.enhance(np.full((150, 200, 3), 40, np.uint8))  # beyond 96x128: tiled
    assert small.shape == (5, 7, 3) and large.shape == (150, 200, 3)


def test_real_engine_with_a_stale_sidecar_is_refused(tiny_engine, tmp_path):
    _, engine, _ = tiny_engine
    copy = tmp_path / "copy.plan"
    copy.write_bytes(engine.read_bytes())
    sidecar = json.loads((engine.parent / "tiny.plan.json").read_text())
    write_sidecar(copy, {**sidecar, "tensorrt_version": "9.0.0"})
    with pytest.raises(BadArtifactError, match="stale TensorRT engine"):
        TensorRTBackend(copy).load()
    with TensorRTBackend(copy, check_sidecar=False):  # the escape hatch loads it
        pass


def test_an_engine_that_does_not_match_its_recorded_hash_is_refused(tmp_path):
    from contract.engine_sidecar import check_engine_bytes, write_sidecar
    from contract.integrity import PAYLOAD_KEY
    from contract.files import file_sha256

    engine = make_engine(tmp_path, None)
    assert check_engine_bytes(engine, engine.read_bytes()) is False  # no sidecar (trtexec): unverified, not refused
    write_sidecar(engine, {PAYLOAD_KEY: file_sha256(engine)})
    assert check_engine_bytes(engine, engine.read_bytes()) is True
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(BadArtifactError, match=r"model\.plan is corrupt.*changed on disk.*export\.tensorrt"):
        check_engine_bytes(engine, bytes(data))
