"""The contract every inference backend meets (the backends of ``runtime.registry``: torch, onnxruntime, openvino,
aoti, tensorrt, triton), in the style of Polygraphy's runners.

A backend takes an *unpadded* float32 RGB batch [N,3,H,W] in [0,1] with per-image weights and returns the
clamped enhanced batch of the same shape; padding to the model's multiple (``contract.graph.PAD_MULTIPLE``) happens
inside the model or graph.
Image-level work (dtype conversion, gray/alpha, batching, tiling) lives above backends, in ``runtime.enhancer``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from contract.errors import BackendError, InputError  # noqa: F401  (BackendError: the runtime's name for it)
from contract.graph import WEIGHT_NAMES

from .options import build


@dataclass(frozen=True)
class BackendInfo:
    name: str  # the backend's registry name
    device: str  # "cpu", "cuda:0", "NVIDIA H100 ..."
    precision: str  # what ran, in the reported vocabulary of contract.graph (fp32, fp16-mixed, ...)
    min_hw: tuple[int, int] = (1, 1)  # smallest input H, W accepted
    max_hw: tuple[int, int] | None = None  # largest input H, W (None: limited by memory only)
    max_batch: int | None = None
    extra: dict = field(default_factory=dict)  # backend-specific facts (providers, engine sidecar, ...)
    # How to run a size beyond max_hw with this model, for messages (tiling works for every backend).
    larger: str = "make the model for larger inputs"


@dataclass
class InferResult:
    enhanced: np.ndarray  # float32 [N,3,H,W], clamped to [0,1]
    codes: np.ndarray | None = None  # int [N,1,Hp/4,Wp/4] when the backend can report them


@runtime_checkable
class Backend(Protocol):
    def load(self) -> None:
        """Acquire resources (model weights, sessions, engines, device buffers). Idempotent."""

    def infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        """images float32 [N,3,H,W] RGB in [0,1]; w_texture, w_style float32 [N]."""

    def describe(self) -> BackendInfo: ...

    def close(self) -> None:
        """Release resources. Idempotent."""


class BackendBase:
    """Lifecycle shared by the backends, Polygraphy-runner style: public load/infer/close check state and inputs
    and call the subclass's ``_load``/``_infer``/``_close``; usable as a context manager."""

    #: The backend's option dataclass (runtime.options); its fields are the constructor's keywords.
    Options: type | None = None

    def __init__(self, **options) -> None:
        self._loaded = False
        self._info: BackendInfo | None = None
        if self.Options is not None:
            self.options = build(self.Options, self.name, options)
            # Each option is also an attribute of the same name (the backend may refine it, e.g. a device object).
            for f in dataclasses.fields(self.options):
                setattr(self, f.name, getattr(self.options, f.name))

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True
            # Fixed once loaded; every infer() checks its batch against it, so it is built once, not per call.
            self._info = self._describe()

    def infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        self.load()
        w_texture = np.asarray(w_texture, dtype=np.float32)
        w_style = np.asarray(w_style, dtype=np.float32)
        check_batch(images, w_texture, w_style, self.describe())
        return self._infer(np.ascontiguousarray(images), w_texture, w_style)

    def describe(self) -> BackendInfo:
        self.load()  # shape limits and metadata come from the loaded model, session or engine
        return self._info

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False
            self._info = None

    def __enter__(self):
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        raise NotImplementedError

    def _describe(self) -> BackendInfo:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


def check_batch(images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray, info: BackendInfo) -> None:
    """Validate a batch against the contract and the backend's shape range, with a specific message."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"{info.name}: images must be [N,3,H,W], got {images.shape}")
    if images.dtype != np.float32:
        raise InputError(f"{info.name}: images must be float32 in [0,1], got {images.dtype}")
    n, _, h, w = images.shape
    for name, wt in zip(WEIGHT_NAMES, (w_texture, w_style)):
        if wt.shape != (n,):
            raise InputError(f"{info.name}: {name} must have shape ({n},), got {wt.shape}")
    if h < info.min_hw[0] or w < info.min_hw[1]:
        raise InputError(f"{info.name}: {h}x{w} is below the smallest supported size {info.min_hw[0]}x{info.min_hw[1]}")
    if info.max_hw is not None and (h > info.max_hw[0] or w > info.max_hw[1]):
        raise InputError(
            f"{info.name}: {h}x{w} exceeds the largest supported size {info.max_hw[0]}x{info.max_hw[1]}; "
            f"run it in tiles (--tile N, Enhancer(tile=N)) or {info.larger}"
        )
    if info.max_batch is not None and n > info.max_batch:
        raise InputError(f"{info.name}: batch {n} exceeds the maximum {info.max_batch}")
