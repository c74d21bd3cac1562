"""TensorRT backend: runs a serialized engine (export/tensorrt.py or trtexec) with cuda-python buffers and a stream.

Written against the TensorRT 10/11 name-based I/O API (shared notes/tensorrt.md section 2): tensors are found by
name with num_io_tensors/get_tensor_name/get_tensor_mode, shapes are set per call within optimization profile 0,
and execute_async_v3 runs on our own stream. TensorRT and cuda-python are imported inside load(), so this
module, its dtype/sidecar/buffer logic and its tests work without them.

Why not Polygraphy's TrtRunner (the builder uses Polygraphy's loaders): cuda-python stays our device-memory layer
(pycuda ships no wheels and needs a CUDA toolkit at install time), while TrtRunner brings a second one
(polygraphy.cuda, ctypes over a libcudart.so found on the library path), and its infer() checks every feed with
polygraphy.util.array.is_torch, which imports torch wherever torch is installed (polygraphy 0.53.6),
so the runtime would load torch. The execution part it would replace is ~40 lines; the sidecar check, the contract
I/O check, batch padding to the profile minimum and the error messages stay ours either way.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from contract import optional
from contract.graph import (INPUT_IMAGE, INPUT_NAMES, OUTPUT_CODES, OUTPUT_ENHANCED, WEIGHT_NAMES,
                            check_io)
from contract.provenance import Provenance
from contract.engine_sidecar import GpuInfo, StaleEngineError, check_engine_bytes, check_sidecar, detect_gpu

from .backend import BackendBase, BackendError, BackendInfo, InferResult
from .options import TensorRTOptions


# TensorRT DataType member name -> numpy dtype of the host array that is copied in or out.
NUMPY_DTYPES = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def numpy_dtype(trt_dtype) -> np.dtype:
    """numpy dtype for a tensorrt.DataType (or its name, e.g. "HALF"); bf16/fp8/int4 have no numpy twin."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in NUMPY_DTYPES:
        raise BackendError(f"tensorrt: engine tensor type {name} has no numpy equivalent; rebuild the engine with "
                           "fp32/fp16 inputs and outputs (keep_io_types)")
    return NUMPY_DTYPES[name]


def profile_limits(min_shape, max_shape) -> dict:
    """Batch and H,W limits of the image input from its profile shapes [N,3,H,W] (for BackendInfo)."""
    min_shape, max_shape = tuple(int(d) for d in min_shape), tuple(int(d) for d in max_shape)
    if len(min_shape) != 4 or len(max_shape) != 4:
        raise BackendError(f"tensorrt: engine input {INPUT_IMAGE!r} must be 4-D [N,3,H,W], its profile is "
                           f"{min_shape}..{max_shape}")
    return {"min_batch": min_shape[0], "max_batch": max_shape[0], "min_hw": min_shape[2:], "max_hw": max_shape[2:]}


def verify_sidecar(engine_path: Path, trt_version: str, gpu: GpuInfo) -> dict | None:
    """The engine's build record (``<engine>.json``, written by export/tensorrt.py), or None for an engine
    without one (trtexec); a record naming another TensorRT version or GPU is refused."""
    try:
        return check_sidecar(engine_path, trt_version, gpu.name, gpu.compute_capability, require=False)
    except StaleEngineError as e:  # exit 2: rebuild it
        raise StaleEngineError(f"tensorrt: {e} An engine runs only with the TensorRT version and GPU model it was "
                               "built for (or pass check_sidecar=False to try it anyway).") from None


class DeviceBuffers:
    """One device allocation per tensor name, kept across calls and replaced only when a larger one is needed.

    ``allocate(nbytes) -> address`` and ``free(address)`` are the CUDA calls (cudaMalloc/cudaFree).
    """

    def __init__(self, allocate: Callable[[int], int], free: Callable[[int], None]):
        self.allocate, self.free = allocate, free
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (address, capacity in bytes)

    def get(self, name: str, nbytes: int) -> int:
        nbytes = max(int(nbytes), 1)  # cudaMalloc(0) returns no usable address
        address, capacity = self.buffers.get(name, (0, 0))
        if capacity < nbytes:
            if address:
                self.free(address)
                del self.buffers[name]  # keep no dangling address if the allocation below fails
            address, capacity = self.allocate(nbytes), nbytes
            self.buffers[name] = (address, capacity)
        return address

    def release(self) -> None:
        for address, _ in self.buffers.values():
            self.free(address)
        self.buffers.clear()


def import_tensorrt():
    try:
        return optional.import_tensorrt()
    except optional.MissingDependency as e:
        raise BackendError(f"tensorrt: {e}") from e


def import_cudart():
    try:
        return optional.import_cudart()
    except optional.MissingDependency as e:
        raise BackendError(f"tensorrt: {e}") from e


def cuda_check(result):
    """cuda-python calls return (err, *results): raise on an error, else return the result(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"tensorrt: CUDA error {int(err)} ({getattr(err, 'name', err)})")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def native_handle(stream) -> int:
    """The cudaStream_t as the integer execute_async_v3 takes (int() is deprecated from cuda-bindings 13.0)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


def cuda_index(device: int | str) -> int:
    """The CUDA device index of 1, "1", "cuda" or "cuda:1" (the CLI's and harness's device spelling)."""
    text = str(device).strip().lower().removeprefix("cuda").removeprefix(":")
    try:
        return int(text or 0)
    except ValueError:
        raise BackendError(f"tensorrt: {device!r} is not a CUDA device; use an index, cuda or cuda:N") from None


class TensorRTBackend(BackendBase):
    """``engine_path``: a serialized engine (.plan/.engine/.trt); ``device``: CUDA device (index, "cuda:N").

    ``check_sidecar``: refuse an engine whose ``<engine>.json`` says it was built for another TensorRT or GPU.
    """

    name = "tensorrt"

    Options = TensorRTOptions

    def __init__(self, engine_path: str | os.PathLike, **options):
        super().__init__(**options)
        self.engine_path = Path(engine_path)
        self.device_index = cuda_index(self.device)
        self.sidecar_check = self.check_sidecar
        self.engine = self.context = self.stream = self.buffers = None

    def _load(self) -> None:
        trt, cudart = import_tensorrt(), import_cudart()
        if not self.engine_path.is_file():
            raise BackendError(f"tensorrt: engine not found: {self.engine_path}")
        self.cudart = cudart
        cuda_check(cudart.cudaSetDevice(self.device_index))
        self.gpu = detect_gpu(self.device_index)
        if self.gpu is None:
            raise BackendError(f"tensorrt: no CUDA GPU {self.device_index} could be queried (driver or device missing)")
        self.trt_version = trt.__version__
        self.sidecar = verify_sidecar(self.engine_path, self.trt_version, self.gpu) if self.sidecar_check else None
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        data = self.engine_path.read_bytes()
        self.verified = check_engine_bytes(self.engine_path, data)  # always: a corrupt engine never runs
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BackendError(
                f"tensorrt: could not deserialize {self.engine_path} with TensorRT {self.trt_version} (see the "
                "TensorRT log above): a corrupt file, or an engine from another TensorRT version or GPU; rebuild it"
            )
        self._discover_io(trt)
        self.context = self.engine.create_execution_context()
        self.stream = cuda_check(cudart.cudaStreamCreate())
        self.buffers = DeviceBuffers(lambda n: int(cuda_check(cudart.cudaMalloc(n))),
                                     lambda p: cuda_check(cudart.cudaFree(p)))

    def _discover_io(self, trt) -> None:
        """Inputs and outputs by name and mode, so engines from trtexec (any I/O order) work alike."""
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: numpy_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        # The weights may be folded into the engine as constants (trtexec), so only the image input is required.
        self.output_names = list(check_io(self.input_names, self.output_names, where=f"tensorrt: {self.engine_path}",
                                          error=BackendError, optional_inputs=WEIGHT_NAMES, extra_inputs=False,
                                          fix="build it with python -m export.tensorrt"))
        min_shape, _opt, max_shape = self.engine.get_tensor_profile_shape(INPUT_IMAGE, 0)
        self.limits = profile_limits(min_shape, max_shape)

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        cudart = self.cudart
        n = images.shape[0]
        # A profile may start above batch 1: repeat the last image to its minimum and drop the extras after.
        pad = max(self.limits["min_batch"] - n, 0)
        feeds = dict(zip(INPUT_NAMES, (images, w_texture, w_style)))
        hosts = {}  # kept referenced until the stream is synchronized
        for name in self.input_names:
            value = feeds[name]
            if pad:
                value = np.concatenate([value, np.repeat(value[-1:], pad, axis=0)])
            host = hosts[name] = np.ascontiguousarray(value, dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, host.shape):
                raise BackendError(f"tensorrt: input {name} of shape {host.shape} is outside the engine's profile 0")
            address = self.buffers.get(name, host.nbytes)
            cuda_check(cudart.cudaMemcpyAsync(address, host.ctypes.data, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(name, address)
        output_addresses = {}
        for name in self.output_names:  # output shapes are known once every input shape is set
            host = hosts[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
            output_addresses[name] = self.buffers.get(name, host.nbytes)
            self.context.set_tensor_address(name, output_addresses[name])
        if not self.context.execute_async_v3(native_handle(self.stream)):
            raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT log above)")
        for name, address in output_addresses.items():
            host = hosts[name]
            cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, address, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        cuda_check(cudart.cudaStreamSynchronize(self.stream))
        codes = hosts[OUTPUT_CODES][:n] if OUTPUT_CODES in hosts else None
        return InferResult(enhanced=hosts[OUTPUT_ENHANCED][:n].astype(np.float32, copy=False), codes=codes)

    def _describe(self) -> BackendInfo:
        sidecar = self.sidecar or {}
        io_types = {n: str(self.dtypes[n]) for n in self.input_names + self.output_names}
        return BackendInfo(
            name=self.name,
            device=f"cuda:{self.device_index} ({self.gpu.name}, compute capability {self.gpu.compute_capability})",
            precision=(Provenance.from_json(sidecar).precision
                       or f"as built into the engine (image input {io_types[INPUT_IMAGE]})"),
            min_hw=self.limits["min_hw"],
            max_hw=self.limits["max_hw"],
            larger="rebuild the engine with a larger --max (python -m export.tensorrt)",
            max_batch=self.limits["max_batch"],
            extra={"engine": str(self.engine_path), "tensorrt": self.trt_version, "io_types": io_types,
                   "min_batch": self.limits["min_batch"], "sidecar": self.sidecar},
        )

    def _close(self) -> None:
        if self.buffers is not None:
            self.buffers.release()
        if self.stream is not None:
            cuda_check(self.cudart.cudaStreamDestroy(self.stream))
        # The context before the engine it came from.
        self.context = self.engine = self.stream = self.buffers = None
