"""Lightweight CodeEnhance runtime: one Enhancer over the backends of ``runtime.registry`` (torch, ONNX Runtime,
OpenVINO, AOTInductor, TensorRT, a Triton server), and a CLI (``python -m runtime INPUT... -o OUTDIR --model PATH``).
Backend modules are imported only when used."""
from .backend import Backend, BackendError, BackendInfo, InferResult
from .enhancer import Enhancer, backend_for, create_backend

__all__ = ["Backend", "BackendError", "BackendInfo", "Enhancer", "InferResult", "backend_for", "create_backend"]
