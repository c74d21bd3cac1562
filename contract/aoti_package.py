"""The metadata inside every AOTInductor package (``.pt2``) that ``python -m export.aoti`` writes, and the rule that
refuses a stale or foreign package. Torch-free: the package is a zip, read with ``zipfile``.

A compiled package runs only on the device kind it was compiled for (CPU kernels are C++ built for one instruction
set, CUDA kernels are cubins for one GPU architecture) and on the torch release that compiled it (the wrapper .so
links against libtorch's ABI; torch itself records no version and only logs a warning on a device mismatch). So the
facts are written into the package, as ``extra/codeenhance.json`` (the PT2 archive's folder for user files), and a
runtime checks them before it loads any kernel, the same way ``contract.engine_sidecar`` guards TensorRT engines.

The metadata is the package's provenance record (``contract.provenance``: ``kind`` PACKAGE_KIND, the checkpoint,
the exporter fingerprint, the model config, ``precision``, and the environment it runs on: ``torch_version``,
``device`` "cpu" or "cuda", ``cpu_capability`` for CPU packages, ``gpu_name`` and ``compute_capability`` for CUDA
ones), beside the package's index: ``schema``, ``models`` (name -> {"padded": [Hp, Wp]} for a static bucket,
{"padded": null} for the dynamic program), ``max_batch``, ``pad_multiple``. The rest is documentation (compile
times, inductor options, ...).

Static buckets: a bucket is a *padded* size (Hp, Wp), both multiples of ``pad_multiple``. The model always pads an
H x W image to ``((H // m) + 1) * m`` (1..m rows added), so a bucket runs exactly the images with
Hp - m <= H <= Hp - 1 and Wp - m <= W <= Wp - 1; any other size would see a different padded image and give a
different result, so it is never run in a larger bucket.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .errors import BadArtifactError
from .files import json_object
from .integrity import check_zip
from .graph import PAD_MULTIPLE, padded_size
from .provenance import Expect, Kind, Provenance, check_fresh, runs_on_cpu, same_release

PACKAGE_KIND = Kind.AOTI
PACKAGE_SCHEMA = 1
META_NAME = "codeenhance.json"  # written by torch's package_pt2(extra_files=...) under <archive>/extra/
DYNAMIC_MODEL = "dynamic"
META_PAD_MULTIPLE = "pad_multiple"  # the model's pad multiple, recorded by export.aoti
# The dynamic program keeps torch.export's deferred runtime asserts (export.graph.capture): torch 2.13 guards a
# layout choice on the token grid, and the compiled program raises "Expected Ne((s6//32), 0)" for a 1x1 input.
# Measured: 33x150 and 40x64 run, 1x1 does not; both sides >= 32 is the conservative rule.
DYNAMIC_MIN_SIDE = 32
REBUILD = "rebuild it with `python -m export.aoti`"


# A package built for another torch, device or checkpoint, or one without our metadata: a bad artifact.
StalePackageError = BadArtifactError


def bucket_name(padded_hw: tuple[int, int]) -> str:
    return f"b{padded_hw[0]}x{padded_hw[1]}"


def pad_multiple(meta: dict) -> int:
    """The pad multiple a package records (contract.graph.PAD_MULTIPLE for one that records none)."""
    return int(meta.get(META_PAD_MULTIPLE, PAD_MULTIPLE))


def bucket_for(meta: dict, h: int, w: int) -> str | None:
    """The model in the package that runs an H x W input: the bucket whose padded size equals the input's padded
    size, else the dynamic program if there is one and both sides are >= DYNAMIC_MIN_SIDE, else None."""
    multiple = pad_multiple(meta)
    want = [padded_size(h, multiple), padded_size(w, multiple)]
    models = meta.get("models", {})
    for name, spec in models.items():
        if spec.get("padded") == want:
            return name
    if DYNAMIC_MODEL in models and min(h, w) >= DYNAMIC_MIN_SIDE:
        return DYNAMIC_MODEL
    return None


def describe_buckets(meta: dict) -> str:
    """'288x288 (inputs 256..287 x 256..287), dynamic (any size)' for messages."""
    multiple = pad_multiple(meta)
    parts = []
    for name, spec in meta.get("models", {}).items():
        if spec.get("padded") is None:
            parts.append(f"dynamic (any size from {DYNAMIC_MIN_SIDE}x{DYNAMIC_MIN_SIDE})")
        else:
            hp, wp = spec["padded"]
            parts.append(f"{hp}x{wp} (inputs {hp - multiple}..{hp - 1} x {wp - multiple}..{wp - 1})")
    return ", ".join(parts) or "none"


def read_package_meta(path: str | os.PathLike) -> dict | None:
    """The metadata of a package, or None when it has none (not written by export.aoti).
    Raises StalePackageError when the file is not a readable zip or the metadata is not a JSON object."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("extra/" + META_NAME)]
            if not names:
                return None
            text = archive.read(names[0]).decode()
    except (OSError, zipfile.BadZipFile) as exc:
        raise StalePackageError(f"{path} is not a readable .pt2 package ({exc}); {REBUILD}") from exc
    return json_object(text, f"the metadata in {path}", StalePackageError, REBUILD)


def check_package(
    path: str | os.PathLike,
    *,
    torch_version: str,
    device: str,
    cpu_capability: str | None = None,
    compute_capability: str | None = None,
    checkpoint_sha256: str | None = None,
) -> dict:
    """The package's metadata, checked against this process: ``torch_version`` (torch.__version__ without the
    local part, e.g. "2.13.0"), ``device`` ("cpu"/"cuda"), the host CPU capability or the GPU's compute
    capability, and optionally the checkpoint it must come from. Raises StalePackageError naming every mismatch."""
    verified = check_zip(Path(path), META_NAME, REBUILD)  # CRCs and our payload hash, before anything is read from it
    meta = read_package_meta(path)
    if meta is None:
        raise StalePackageError(
            f"{path} has no {META_NAME} metadata, so the torch version, device and checkpoint it was compiled for are "
            f"unknown (a .pt2 from torch.export.save or another tool?); {REBUILD}")
    if meta.get("kind") != PACKAGE_KIND or meta.get("schema") != PACKAGE_SCHEMA:
        raise StalePackageError(f"{path} is not a CodeEnhance package of schema {PACKAGE_SCHEMA} (kind "
                                f"{meta.get('kind')!r}, schema {meta.get('schema')!r}); {REBUILD}")
    if not meta.get("models"):
        raise StalePackageError(f"{path} lists no compiled models; {REBUILD}")
    record = Provenance.from_json(meta)
    built, same_device = record.built_for, record.built_for.device == device
    check_fresh(
        record, path, REBUILD, what="package",
        torch_version=Expect(torch_version, same_release, "compiled packages are tied to the torch release"),
        device=device,
        cpu_capability=cpu_capability and device == "cpu" and same_device
        and Expect(cpu_capability, runs_on_cpu, "its kernels use instructions this CPU may lack"),
        compute_capability=compute_capability and device == "cuda" and same_device
        and Expect(compute_capability, why=f"its kernels were built for {built.gpu_name}"),
        checkpoint_sha256=checkpoint_sha256)
    return {**meta, "integrity": "payload hash verified" if verified else "zip CRCs verified (no payload hash recorded)"}
