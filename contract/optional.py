"""Optional heavy dependencies, imported where they are used, with one install hint each."""
from __future__ import annotations

from .errors import MissingDependency  # noqa: F401  (importable from here too)

TENSORRT_HINT = ('pip install "codeenhance-deploy[tensorrt]" (TensorRT, Polygraphy and cuda-python; needs an NVIDIA '
                 "GPU and driver)")


def import_tensorrt():
    """The ``tensorrt`` module, or MissingDependency."""
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependency(f"TensorRT is not installed ({e}); install it with {TENSORRT_HINT}") from e
    return tensorrt


def import_polygraphy_trt():
    """``polygraphy.backend.trt`` (NVIDIA's TensorRT loaders; pure Python, it imports TensorRT only when a loader
    runs), or MissingDependency."""
    try:
        from polygraphy.backend import trt as polygraphy_trt
    except ImportError as e:
        raise MissingDependency(f"Polygraphy is not installed ({e}); install it with {TENSORRT_HINT}") from e
    return polygraphy_trt


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before; 13.0 removed
    the old name), or MissingDependency."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise MissingDependency(f"cuda-python is not installed ({e}); install it with {TENSORRT_HINT}") from e
    return cudart
