"""The JSON sidecar written next to every TensorRT engine, and the GPU facts it records.

A serialized engine only runs on the TensorRT version and GPU model that built it, and silently
encodes the ONNX graph and shape profile it came from. The sidecar ``<engine>.json`` (for example
``model.plan.json``) keeps those facts in readable form so that a runtime can refuse a stale engine
with a clear message instead of failing inside ``deserialize_cuda_engine``.

The sidecar carries the engine's provenance record (``contract.provenance``: its fields at the top level): the
environment it runs on (``tensorrt_version`` of the builder, ``gpu_name``, ``compute_capability`` such as
``"8.9"``), the graph it was built from (``source_sha256``) and that graph's checkpoint, ``precision`` (read from
the graph), ``shapes`` (the optimization profile) and ``payload_sha256``, the engine file's sha256, written after
the build: the engine's bytes must match it before they are deserialized. Beside the record, for people:
``key``, ``io``, ``onnx`` (path, opset), ``build``, ``created``.

Nothing here imports TensorRT; GPU facts come from cuda-python or, failing that, torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadArtifactError
from .files import json_object, write_bytes_atomically
from .integrity import check_recorded
from .optional import MissingDependency, import_cudart
from .provenance import Expect, Kind, Provenance, check_fresh

SIDECAR_SCHEMA = 2  # 2: the provenance record's field names (payload_sha256, source_sha256, shapes)
REBUILD = "rebuild it with `python -m export.tensorrt`"


# An engine built for another TensorRT version, GPU or ONNX file (or with no sidecar to tell): a bad artifact.
StaleEngineError = BadArtifactError


@dataclass(frozen=True)
class GpuInfo:
    name: str  # as CUDA reports it, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", e.g. "9.0"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``: appending (not replacing) the suffix keeps names unambiguous."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def format_sidecar(content: dict) -> str:
    """Indented JSON with lists of plain values (shapes, names) kept on one line, for people reading it."""
    text = json.dumps(content, indent=2)
    return re.sub(r"\[\n\s+([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]", text)


def write_sidecar(engine_path: str | os.PathLike, content: dict) -> Path:
    path = sidecar_path(engine_path)
    write_bytes_atomically(path, (format_sidecar(content) + "\n").encode())
    return path


def read_sidecar(engine_path: str | os.PathLike) -> dict | None:
    """The sidecar of an engine, or None when there is none. Raises StaleEngineError when it is unreadable."""
    path = sidecar_path(engine_path)
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise StaleEngineError(f"engine sidecar {path} is unreadable ({exc}); rebuild the engine") from exc
    return json_object(text, f"engine sidecar {path}", StaleEngineError, "rebuild the engine")


def check_sidecar(
    engine_path: str | os.PathLike,
    trt_version: str,
    gpu_name: str,
    compute_capability: str | None = None,
    *,
    onnx_sha256: str | None = None,
    require: bool = True,
) -> dict | None:
    """Check that an engine was built for this TensorRT version and GPU (and ONNX file, if given).

    Returns the sidecar. With ``require=False`` an engine without a sidecar (for example one built
    by plain trtexec) is accepted unverified and None is returned. Raises StaleEngineError naming
    every mismatch. TensorRT versions must match exactly: plans are not portable across versions
    unless built version-compatible, which this toolkit does not do.
    """
    content = read_sidecar(engine_path)
    if content is None:
        if require:
            raise StaleEngineError(
                f"{engine_path} has no sidecar {sidecar_path(engine_path).name}, so the TensorRT version and GPU "
                f"it was built for are unknown; {REBUILD}"
            )
        return None
    check_fresh(Provenance.from_json(content, Kind.ENGINE), engine_path, REBUILD, what="TensorRT engine",
                tensorrt_version=trt_version, gpu_name=gpu_name, compute_capability=compute_capability,
                source_sha256=onnx_sha256 and Expect(onnx_sha256, label="ONNX file"))
    return content


def check_engine_bytes(engine_path: str | os.PathLike, data: bytes) -> bool:
    """The engine's bytes against the ``payload_sha256`` its sidecar records (contract.integrity), checked before
    TensorRT deserializes them, whatever else is checked; False when no hash is recorded (no sidecar, trtexec)."""
    record = Provenance.from_json(read_sidecar(engine_path) or {}, Kind.ENGINE)
    return check_recorded(record.payload_sha256, hashlib.sha256(data).hexdigest(), engine_path, REBUILD)


def detect_gpu(device: int = 0) -> GpuInfo | None:
    """Name and compute capability of a CUDA device, or None when no CUDA device can be queried."""
    return _gpu_from_cuda_python(device) or _gpu_from_torch(device)


def _gpu_from_cuda_python(device: int) -> GpuInfo | None:
    try:
        cudart = import_cudart()
    except MissingDependency:
        return None
    try:
        err, props = cudart.cudaGetDeviceProperties(device)
    except Exception:  # driver missing or broken: treat as "no GPU" rather than crash a dry run
        return None
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.rstrip("\x00").strip(), compute_capability=f"{props.major}.{props.minor}")


def _gpu_from_torch(device: int) -> GpuInfo | None:
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(device)
        return GpuInfo(name=torch.cuda.get_device_name(device), compute_capability=f"{major}.{minor}")
    except Exception:
        return None
