"""ONNX Runtime backend: runs the exported graph (its inputs and outputs: ``contract.graph``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contract.graph import (FP16, FP32, INPUT_IMAGE, INPUT_NAMES, OUTPUT_CODES, OUTPUT_ENHANCED,
                            check_io, reported_precision)

from contract.integrity import check_onnx, read_onnx
from contract.provenance import Provenance

from .options import OnnxRuntimeOptions
from .backend import BackendBase, BackendError, BackendInfo, InferResult

# Short names accepted for the execution providers, and the order "auto" tries them in.
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's type strings for the tensor types the graph may declare at its inputs and outputs.
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def resolve_providers(requested: str | list | tuple | None, available: list[str]) -> list[str]:
    """The user's choice -> full provider names; None means CPU only, "auto" the available ones, best first.

    Asking for a provider this onnxruntime build lacks is an error rather than a silent fall back to CPU.
    """
    if requested is None:
        return ["CPUExecutionProvider"]
    if requested == "auto":
        return [p for p in AUTO_ORDER if p in available]
    if isinstance(requested, str):
        requested = requested.split(",")
    names = [PROVIDER_NAMES.get(p.strip().lower(), p.strip()) for p in requested]
    missing = [p for p in names if p not in available]
    if missing:
        raise BackendError(
            f"onnxruntime: provider(s) {', '.join(missing)} not available in this onnxruntime build "
            f"(available: {', '.join(available)}). For CUDA/TensorRT install the GPU build: "
            f'pip uninstall onnxruntime && pip install "codeenhance-deploy[gpu]"'
        )
    return names


def make_session(model, *, threads: int | None = None, providers=("CPUExecutionProvider",), provider_options=None,
                 inter_op_threads: int | None = None, in_node_order: bool = False, arena: bool = True, quiet: bool = False):
    """The one ONNX Runtime session factory (runtime backend, export verification and calibration, benchmarks).

    ``model``: a path or serialized bytes. ``threads``/``inter_op_threads``: ORT's thread pools (None or 0: its
    default). ``in_node_order``: run nodes in the graph's own order (calibration probes free activations early).
    ``arena``: ORT's CPU memory arena (off trades some speed for less peak RSS). ``quiet``: errors only in the log.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = inter_op_threads or 0
    options.enable_cpu_mem_arena = arena
    if in_node_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if quiet:
        options.log_severity_level = 3  # reused-buffer shape warnings are noise in measurements
    source = str(model) if isinstance(model, (str, os.PathLike)) else model
    providers = list(providers)
    return ort.InferenceSession(source, sess_options=options, providers=providers,
                                provider_options=[(provider_options or {}).get(p, {}) for p in providers])


def dim_limit(dim) -> int | None:
    """A static dimension of the graph's input, or None where it is symbolic (dynamic)."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxRuntimeBackend(BackendBase):
    """``providers``: None (CPU), "auto" (TensorRT > CUDA > CPU, those available), a comma list or a list of
    names ("cpu", "cuda", "tensorrt" or full ORT names). ``provider_options``: {provider name: {option: value}},
    e.g. {"tensorrt": {"trt_fp16_enable": True, "trt_engine_cache_enable": True}}.
    ``threads``/``inter_op_threads``: ORT's intra-op and inter-op thread pools (0 or None: ORT's default).
    """

    name = "onnxruntime"

    Options = OnnxRuntimeOptions

    def __init__(self, model_path: str | os.PathLike, **options):
        super().__init__(**options)
        self.model_path = Path(model_path)
        self.provider_options = {PROVIDER_NAMES.get(k.lower(), k): v for k, v in (self.provider_options or {}).items()}
        self.session = None

    def _load(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise BackendError(f"onnxruntime: model not found: {self.model_path}")
        # The graph's recorded payload hash, before ORT runs a byte of it (a flipped weight parses fine).
        self.verified = check_onnx(read_onnx(self.model_path), self.model_path)
        providers = resolve_providers(self.providers, ort.get_available_providers())
        try:
            self.session = make_session(self.model_path, threads=self.threads, providers=providers,
                                        provider_options=self.provider_options, inter_op_threads=self.inter_op_threads)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types, all with the useful text
            raise BackendError(f"onnxruntime: cannot load {self.model_path}: {e}") from e
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = list(check_io(self.inputs, outputs, where=f"onnxruntime: {self.model_path}",
                                          error=BackendError))

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        feed = {}
        for name, value in zip(INPUT_NAMES, (images, w_texture, w_style)):
            feed[name] = value.astype(ORT_TYPES.get(self.inputs[name].type, np.float32), copy=False)
        results = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        return InferResult(enhanced=results[OUTPUT_ENHANCED].astype(np.float32, copy=False), codes=results.get(OUTPUT_CODES))

    def _describe(self) -> BackendInfo:
        n, _, h, w = self.inputs[INPUT_IMAGE].shape
        static_hw = (dim_limit(h), dim_limit(w))
        metadata = self.session.get_modelmeta().custom_metadata_map
        image_type = self.inputs[INPUT_IMAGE].type
        return BackendInfo(
            name=self.name,
            device=self.session.get_providers()[0],
            precision=(Provenance.from_strings(metadata).precision
                       or reported_precision(FP16 if image_type == "tensor(float16)" else FP32)),
            # A static H or W in the graph is both its minimum and its maximum.
            min_hw=(static_hw[0] or 1, static_hw[1] or 1),
            max_hw=None if static_hw == (None, None) else (static_hw[0] or 1 << 30, static_hw[1] or 1 << 30),
            larger="export a graph with dynamic image sizes (python -m export.onnx)",
            max_batch=dim_limit(n),
            extra={
                "model": str(self.model_path),
                "integrity": "payload hash verified" if self.verified else "unverified (the graph records no payload hash)",
                "providers": self.session.get_providers(),
                "input_shape": list(self.inputs[INPUT_IMAGE].shape),
                "outputs": list(self.output_names),
                "metadata": dict(metadata),
            },
        )

    def _close(self) -> None:
        self.session = None
