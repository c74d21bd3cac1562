"""Every runtime backend, declared once: its name, the files it runs and its option dataclass (runtime.options).

The Enhancer, the CLI and the benchmark harness derive what they accept from this table and the dataclasses; the
backend's module is imported only when the backend is used (torch, TensorRT and OpenVINO are heavy or optional).
Adding a backend: one file in runtime/ with a ``BackendBase`` subclass, its dataclass in runtime/options.py, and
one ``BackendSpec`` line here.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from contract import formats
from contract.errors import InputError

from . import options


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # "runtime.<file>", imported on use
    cls: str
    suffixes: tuple[str, ...]  # model files it is chosen for by default
    kinds: tuple[str, ...]  # what the file must really be (contract.formats)
    options_class: type  # its options (runtime.options): the constructor's keywords
    schemes: tuple[str, ...] = ()  # URL schemes it serves instead of a file ("triton://")

    @property
    def options(self) -> tuple[str, ...]:
        """The option names."""
        return tuple(f.name for f in dataclasses.fields(self.options_class))

    @property
    def precisions(self) -> tuple[str, ...]:
        """Values of its ``precision`` option; () when the model file decides."""
        return options.precisions_of(self.options_class)

    def load_class(self):
        return getattr(importlib.import_module(self.module), self.cls)


BACKENDS = {spec.name: spec for spec in (
    BackendSpec("torch", "runtime.torch_backend", "TorchBackend", (".pth", ".pt"), (formats.TORCH_CHECKPOINT,),
                options.TorchOptions),
    BackendSpec("onnxruntime", "runtime.onnxruntime_backend", "OnnxRuntimeBackend", (".onnx",), (formats.ONNX_GRAPH,),
                options.OnnxRuntimeOptions),
    BackendSpec("tensorrt", "runtime.tensorrt_backend", "TensorRTBackend", (".plan", ".engine", ".trt"), (),
                options.TensorRTOptions),
    BackendSpec("openvino", "runtime.openvino_backend", "OpenVINOBackend", (".xml",),
                (formats.OPENVINO_IR, formats.ONNX_GRAPH), options.OpenVINOOptions),
    BackendSpec("aoti", "runtime.aoti_backend", "AotiBackend", (".pt2",), (formats.TORCH_PACKAGE,), options.AotiOptions),
    BackendSpec("triton", "runtime.triton_backend", "TritonBackend", (), (), options.TritonOptions, schemes=("triton://",)),
)}


def backend_for_suffix(suffix: str) -> BackendSpec | None:
    return next((spec for spec in BACKENDS.values() if suffix.lower() in spec.suffixes), None)


def is_url(model) -> bool:
    return isinstance(model, str) and "://" in model


def backend_for_url(url: str) -> BackendSpec:
    spec = next((s for s in BACKENDS.values() if any(url.startswith(scheme) for scheme in s.schemes)), None)
    if spec is None:
        schemes = [scheme for s in BACKENDS.values() for scheme in s.schemes]
        raise InputError(f"no backend serves {url}; model URLs start with {', '.join(schemes) or '(none known)'}")
    return spec


def choose_backend(model_path: str | os.PathLike, backend: "str | BackendSpec | None" = None) -> BackendSpec:
    """The backend for ``model_path``: ``backend`` when given, else by suffix. A file that exists is also checked
    for what it really is: InputError for a folder, an empty file, or a file the backend does not run (with what
    it is and what to do). A missing file is the backend's to report when it loads. A ``BackendSpec`` that this
    function returned before is taken as it is (the file is classified once)."""
    if isinstance(backend, BackendSpec):
        return backend
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}")
    if is_url(model_path):
        spec = backend_for_url(model_path)
        if backend is not None and backend != spec.name:
            raise InputError(f"{model_path} is served by the {spec.name} backend, not {backend}")
        return spec
    path = Path(model_path)
    kind = formats.detect(path) if path.exists() else formats.UNKNOWN
    if kind == formats.FOLDER:
        raise InputError(f"{path} is a folder; name the model file in it (.pth, .onnx, .plan, ...)")
    if kind == formats.EMPTY:
        raise InputError(f"{path} is an empty file; export it again")
    spec = BACKENDS[backend] if backend else backend_for_suffix(path.suffix)
    right = next((s for s in BACKENDS.values() if kind in s.kinds), None)  # the backend for what the file is
    if spec is None:
        what = (f"it is {formats.a(kind)}: name it {path.stem}{right.suffixes[0]} or pass --backend {right.name}" if right else
                f"pass --backend (backend= in Python), one of {', '.join(BACKENDS)}")
        raise InputError(f"cannot tell the backend from the suffix of {path} ({path.suffix or 'none'}; known: "
                         f"{', '.join(s for b in BACKENDS.values() for s in b.suffixes)}); {what}")
    if spec.kinds and kind not in spec.kinds and kind != formats.UNKNOWN:
        if right is None:
            fix = ""
        elif path.suffix.lower() in right.suffixes:  # its name is already right: only the backend asked for is not
            fix = f"; run it with --backend {right.name} (backend='{right.name}' in Python), or leave the backend out"
        else:
            fix = f"; rename it to {path.stem}{right.suffixes[0]} or pass --backend {right.name}"
        raise InputError(f"{path} is {formats.a(kind)}, not {' or '.join(map(formats.a, spec.kinds))} for the "
                         f"{spec.name} backend{fix}")
    return spec
