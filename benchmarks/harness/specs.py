"""What can be benchmarked: the backends (with what each needs to run) and the input sizes."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from contract.errors import InputError
from contract.graph import FP16, FP32, reported_precision
from contract.sizes import SIZE_ALIASES, parse_size, parse_sizes  # noqa: F401  (the harness's size names)


def size_label(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


@dataclass(frozen=True)
class BackendSpec:
    name: str
    runtime: str  # which runtime/ backend runs it (a runtime.registry name)
    precision: str  # "fp32", "fp16" or "bf16" (the graph, autocast or OpenVINO keeps the FP32 islands)
    artifact: str  # what it loads: "checkpoint", "onnx", "onnx_fp16", "onnx_onehot", "engine", "aoti", "aoti_fp16"
    # or "openvino_bf16"
    summary: str
    needs_cuda: bool = False
    options: tuple = ()  # extra backend keyword arguments, as (name, value) pairs

    @property
    def precision_label(self) -> str:
        """What the tables show: fp16 always means fp16 with fp32 islands here (autocast or the converted graph)."""
        if self.precision in (FP32, "tf32"):
            return self.precision
        return reported_precision(FP16 if self.precision.startswith(FP16) else self.precision)  # fp16-lean too


BACKENDS = {
    spec.name: spec
    for spec in (
        BackendSpec("torch", "torch", "fp32", "checkpoint", "PyTorch eager fp32: the reference"),
        BackendSpec("torch-tf32", "torch", "tf32", "checkpoint", "PyTorch CUDA with TF32 convolutions and matmuls",
                    needs_cuda=True),
        BackendSpec("torch-fp16", "torch", "fp16", "checkpoint", "PyTorch CUDA autocast fp16 with fp32 islands",
                    needs_cuda=True),
        BackendSpec("torch-fp16-lean", "torch", "fp16-lean", "checkpoint",
                    "PyTorch CUDA fp16 weights, no autocast: norms on fp16 tensors, FP32 islands cast explicitly",
                    needs_cuda=True),
        BackendSpec("torch-fp16-lean-graphs", "torch", "fp16-lean", "checkpoint",
                    "torch-fp16-lean replayed from a CUDA graph captured per input size", needs_cuda=True,
                    options=(("cuda_graphs", True),)),
        BackendSpec("onnxruntime", "onnxruntime", "fp32", "onnx", "ONNX Runtime, fp32 graph, gather lookup"),
        BackendSpec("onnxruntime-fp16", "onnxruntime", "fp16", "onnx_fp16",
                    "ONNX Runtime, mixed-precision fp16 graph (export.precision)"),
        BackendSpec("tensorrt", "tensorrt", "fp16", "engine", "TensorRT engine built from the fp16 graph",
                    needs_cuda=True),
        BackendSpec("onehot", "onnxruntime", "fp32", "onnx_onehot",
                    "ONNX Runtime, fp32 graph with the original one-hot lookup (baseline)"),
        BackendSpec("openvino", "openvino", "fp32", "onnx", "OpenVINO CPU, fp32 graph (f32 hint set explicitly)"),
        BackendSpec("openvino-bf16", "openvino", "bf16", "openvino_bf16",
                    "OpenVINO CPU, bf16 IR from export.openvino: FP32 islands kept (nearest-code search, "
                    "normalisation), other weights bf16; static shapes"),
        BackendSpec("aoti", "aoti", "fp32", "aoti", "AOTInductor package (export.aoti), one static bucket per size"),
        BackendSpec("aoti-fp16", "aoti", "fp16", "aoti_fp16", "AOTInductor CUDA package, fp16 with the FP32 islands",
                    needs_cuda=True),
    )
}

#: Every other backend is compared with this one, measured in the same run.
REFERENCE = "torch"
# The one-hot baseline is opt-in (--backends ...,onehot): its extra export of the official model costs minutes on a
# small CPU, and benchmarks/onnx_lookup.py already compares the two lookups.
DEFAULT_BACKENDS = ("torch", "torch-fp16", "onnxruntime", "onnxruntime-fp16", "openvino", "openvino-bf16", "tensorrt")


def parse_backends(text: str) -> list[str]:
    """Names in the order given, the reference first (it is always measured: fidelity and speedup need it)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys([REFERENCE, *names]))


def skip_reason(spec: BackendSpec, device: str, cuda_available: bool, ort_providers: list[str]) -> str | None:
    """Why ``spec`` cannot run here, or None. Cheap checks only: anything subtler is reported by the worker."""
    reasons = []
    if spec.needs_cuda and device != "cuda":
        reasons.append(f"needs a CUDA GPU and this run uses --device {device}")
    if (spec.needs_cuda or device == "cuda") and not cuda_available:
        reasons.append("no usable CUDA GPU on this machine")
    if spec.runtime == "openvino" and importlib.util.find_spec("openvino") is None:
        reasons.append("OpenVINO is not installed (pip install -e '.[openvino]')")
    if spec.runtime == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        reasons.append("the TensorRT Python package is not installed (pip install -e '.[tensorrt]')")
    if spec.runtime == "onnxruntime" and device == "cuda" and "CUDAExecutionProvider" not in ort_providers:
        reasons.append("this onnxruntime has no CUDAExecutionProvider (pip install -e '.[gpu]')")
    return "; ".join(reasons) or None
