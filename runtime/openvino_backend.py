"""OpenVINO backend (CPU): runs the exported graph (.onnx, or an OpenVINO IR .xml) in fp32 or bf16 with FP32 islands.

Precision is always set explicitly: OpenVINO's CPU plugin *defaults* to bf16 on any CPU with avx512_bf16 (AMD EPYC
included), so ``fp32`` compiles with ``INFERENCE_PRECISION_HINT=f32``. ``bf16`` compiles with the bf16 hint an IR
written by ``runtime.openvino_ir`` (FP32 islands marked, other weights stored bf16). What actually ran in which
precision is read back from ``compiled.get_runtime_model()`` and reported in ``describe().extra``. ``precision=None``
takes the IR's own (an IR written for bf16 refuses fp32: its weights are rounded), else fp32.

Shapes: ``shapes="static"`` (default) compiles the graph for the exact input shape and compiles again when the
shape changes (the last one is kept). OpenVINO's CPU plugin plans memory only for static shapes: with a dynamic
model every node gets its own buffer, so static shapes take far less peak memory and run a little faster (README,
"OpenVINO on the CPU", has the figures). A new shape costs one compile from the IR, so ``"dynamic"`` (one compiled
model for every shape) suits streams of images that all differ in size.

An ``.onnx`` graph is converted once to an IR that every compile reads: in ``cache_dir`` when given (a second start
reuses it and skips reading and marking the graph), else in a temporary folder removed on close
(``python -m export.openvino`` writes one ahead of time). With ``shapes="dynamic"`` and a ``cache_dir``, OpenVINO's
``CACHE_DIR`` also keeps the compiled blob there, so a second start imports it; static compiles are not cached that
way (one blob as large as the weights per shape).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from contract.errors import BadArtifactError, InputError
from contract.files import file_sha256
from contract.integrity import CacheManifest, check_ir, check_onnx, read_onnx
from contract.graph import (BF16, BF16_MIXED, FP32, INPUT_IMAGE, INPUT_NAMES, OUTPUT_CODES, OUTPUT_ENHANCED,
                            check_io, reported_precision)
from contract.provenance import Expect, check_fresh, read_provenance

from .backend import BackendBase, BackendError, BackendInfo, InferResult
from .options import OPENVINO_PRECISIONS, OpenVINOOptions
from .openvino_ir import import_openvino, rt_record, write_ir, writer_fingerprint

PRECISIONS = OPENVINO_PRECISIONS
# The shape compiled at load, to check the graph and report what runs in which precision before the first image.
PROBE_HW = (32, 32)
OV_HINT = {FP32: "f32", BF16: "bf16"}
# OpenVINO op types that do arithmetic worth reporting (the rest: shapes, reshapes, constants).
COMPUTE_TYPES = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "MVN", "Softmax", "TopK",
                 "Eltwise", "Subgraph", "Reduce", "Interpolate", "Gather", "DepthToSpace", "Deconvolution"}


# ------------------------------------------------------------------------------------------- reporting


def runtime_row(op) -> dict:
    """One node of a compiled model's runtime graph: name, layer type, runtime precision, original op names."""
    info = op.get_rt_info()
    get = lambda key: info[key].astype(str) if key in info else ""
    return {"name": op.get_friendly_name(), "layer_type": get("layerType"), "precision": get("runtimePrecision"),
            "original": get("originalLayersNames")}


def lookup_runtime_ops(runtime_model) -> list:
    """The nearest-code lookup in a runtime graph, found by structure (names differ between .onnx and IR): each TopK
    (ONNX ArgMin), the node computing its distances, and the Gathers its indices feed (the codebook rows)."""
    passthrough = {"Reorder", "Reshape", "Squeeze", "Unsqueeze", "Convert"}
    kind = lambda op: runtime_row(op)["layer_type"]
    found = []
    for topk in (op for op in runtime_model.get_ordered_ops() if kind(op) == "TopK"):
        src = topk.input_value(0).get_node()
        while kind(src) in passthrough:
            src = src.input_value(0).get_node()
        found += [src, topk]
        stack = [t.get_node() for out in topk.outputs() for t in out.get_target_inputs()]
        while stack:
            op = stack.pop()
            if kind(op) == "Gather" and op not in found:
                found.append(op)
            elif kind(op) in passthrough:
                stack += [t.get_node() for t in op.output(0).get_target_inputs()]
    return found


# ------------------------------------------------------------------------------------------- the backend


class OpenVINOBackend(BackendBase):
    """``precision``: "fp32" or "bf16" (mixed: FP32 islands), None: an IR's own, else fp32. ``threads``: inference
    threads (None: OpenVINO's default, all cores). ``cache_dir``: folder for the converted IR and, with dynamic
    shapes, the compiled model (None: a temporary folder, nothing kept). ``shapes``: "static" (compile per input
    shape: least memory) or "dynamic" (one compiled model). ``keep_fp32``: extra op types or ONNX node names to keep
    fp32 under bf16 (e.g. ["Softmax"]). ``device``: OpenVINO device name; the islands and precision hints are
    written for "CPU".
    """

    name = "openvino"

    Options = OpenVINOOptions

    def __init__(self, model_path: str | os.PathLike, **options):
        super().__init__(**options)
        self.model_path = Path(model_path)
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else None
        self.keep_fp32 = tuple(self.keep_fp32)
        self.compiled = self.request = self.compiled_shape = None
        self.ir: Path | None = None
        self.workdir: Path | None = None  # the temporary folder of a converted IR, removed on close
        self.islands: dict = {}
        self.compiles = 0

    # -- loading

    def _config(self) -> dict:
        config = {"INFERENCE_PRECISION_HINT": OV_HINT[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir is not None and self.shapes == "dynamic":
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def _load(self) -> None:
        ov = import_openvino()
        if not self.model_path.is_file():
            raise BackendError(f"openvino: model not found: {self.model_path}")
        suffix = self.model_path.suffix.lower()
        if suffix not in (".onnx", ".xml"):
            raise BackendError(f"openvino: expected an .onnx graph or an OpenVINO IR .xml, got {self.model_path}")
        core = ov.Core()
        if self.device not in core.available_devices:
            raise BackendError(f"openvino: device {self.device!r} not available (available: {', '.join(core.available_devices)})")
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.core, self.ov_version = core, ov.get_version()
        if suffix == ".xml" and self.keep_fp32:
            raise InputError(f"openvino: keep_fp32 applies when converting an .onnx graph; the islands of the IR "
                             f"{self.model_path} were fixed when it was written")
        # The recorded payload hash, before OpenVINO reads the file (a flipped weight converts and runs fine).
        self.verified = (check_ir(self.model_path, "write it again with python -m export.openvino") if suffix == ".xml"
                         else check_onnx(read_onnx(self.model_path), self.model_path))
        self.cache_notes: list[str] = []
        try:
            if suffix == ".xml":
                self.ir = self.model_path
                model = core.read_model(str(self.ir))
                self.precision = self._precision_of_ir(rt_record(model).precision)
            else:
                self.precision = self.precision or FP32
                self.ir = self._convert(core)
                model = core.read_model(str(self.ir))
            self._check_contract(model)
            # Compile now (dynamic: the model; static: a small probe shape) so that describe() reports what runs.
            self._compile(None if self.shapes == "dynamic" else (1, 3, *PROBE_HW), model)
            del model  # later compiles read the IR again (memory-mapped)
        except BaseException as e:
            self._close()  # the temporary folder of a conversion
            if isinstance(e, (BackendError, ValueError)) or not isinstance(e, Exception):
                raise
            # OpenVINO raises RuntimeError/GeneralFailure with the useful text
            raise BackendError(f"openvino: cannot load {self.model_path}: {e}") from e

    def _check_contract(self, model) -> None:
        inputs = sorted({i.get_any_name() for i in model.inputs})
        outputs = [o.get_any_name() for o in model.outputs]
        self.output_names = list(check_io(inputs, outputs, where=f"openvino: {self.model_path}", error=BackendError))
        self.input_shape = str(model.input(INPUT_IMAGE).get_partial_shape())

    def _compile(self, shape, model=None) -> None:
        """Compile the IR for ``shape`` (N, 3, H, W), or with its dynamic shape for None; ``model``: the IR already
        read (reshaped here), else it is read again."""
        self.request = self.compiled = self.compiled_shape = None  # free the previous model first: peak memory holds one
        try:
            if shape is None:
                # A path, not a Model: with CACHE_DIR a second start imports the blob without reading the graph.
                # OpenVINO does not check its blobs: ours are verified against the hashes recorded when written.
                blobs = CacheManifest(self.cache_dir, "*.blob") if self.cache_dir is not None else None
                if blobs is not None:
                    self.cache_notes += [f"compiled blob {name} rebuilt: it does not match the hash recorded when it "
                                         "was written" for name in blobs.verify()]
                self.compiled = self.core.compile_model(str(self.ir), self.device, self._config())
                if blobs is not None:
                    blobs.record()
            else:
                model = self.core.read_model(str(self.ir)) if model is None else model
                model.reshape({INPUT_IMAGE: list(shape), **{name: [shape[0]] for name in INPUT_NAMES if name != INPUT_IMAGE}})
                self.compiled = self.core.compile_model(model, self.device, self._config())
                del model
        except Exception as e:
            raise BackendError(f"openvino: cannot compile {self.ir} for input shape {shape or self.input_shape}: {e}") from e
        self.request = self.compiled.create_infer_request()
        self.compiled_shape = shape
        self.compiles += 1

    def _precision_of_ir(self, written_for: str | None) -> str:
        if written_for == BF16_MIXED and self.precision == FP32:
            raise BackendError(
                f"openvino: {self.model_path} was written for bf16 (its weights are stored bf16), so it cannot run "
                "fp32; run the .onnx graph for fp32, or pass precision bf16")
        if written_for != BF16_MIXED and self.precision == BF16:
            # Its ops carry no FP32-island marks: the bf16 hint would lower the nearest-code lookup too.
            raise BackendError(
                f"openvino: {self.model_path} was not written for bf16 (it was written for {written_for or 'an unknown precision'}: "
                "no FP32 islands marked); write a bf16 IR with python -m export.openvino, or run the .onnx graph")
        return self.precision or (BF16 if written_for == BF16_MIXED else FP32)

    def _convert(self, core) -> Path:
        """The IR every compile reads: the graph as is (fp32) or with the FP32 islands marked (bf16); written to
        cache_dir once per model content, options and writer (writer_fingerprint), else to a temporary folder."""
        if self.cache_dir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="codeenhance-ov-"))
            return self._write_ir(core, self.workdir / f"{self.model_path.stem}-{self.precision}.xml")
        source = file_sha256(self.model_path)
        key = hashlib.sha256(repr((source, self.precision, self.keep_fp32, writer_fingerprint(self.ov_version))).encode())
        xml = self.cache_dir / f"{self.model_path.stem}-{self.precision}-{key.hexdigest()[:16]}.xml"
        if xml.is_file() and xml.with_suffix(".bin").is_file() and self._cached_ir_intact(xml, source):
            try:
                self.islands = json.loads(xml.with_suffix(".json").read_text())
            except (OSError, ValueError):
                self.islands = {"ir": str(xml)}
            self.islands["reused_ir"] = True
            return xml
        return self._write_ir(core, xml, source)

    def _cached_ir_intact(self, xml: Path, source_sha256: str) -> bool:
        """A cached IR that fails its payload hash, or whose provenance record is not that of the IR this graph,
        precision and writer make, is deleted (and written again), with a note."""
        try:
            if not check_ir(xml, "it is rebuilt"):
                raise BadArtifactError(f"{xml} records no payload hash; it is rebuilt")
            check_fresh(read_provenance(xml), xml, "it is rebuilt", source_sha256=Expect(source_sha256, label="graph"),
                        exporter_fingerprint=writer_fingerprint(self.ov_version),
                        precision=reported_precision(self.precision))
            return True
        except BadArtifactError as e:
            why = str(e).split(";")[0]
        for path in (xml, xml.with_suffix(".bin"), xml.with_suffix(".json")):
            path.unlink(missing_ok=True)
        self.cache_notes.append(f"cached IR {xml.name} rebuilt: {why}")
        return False

    def _write_ir(self, core, xml: Path, source_sha256: str | None = None) -> Path:
        self.islands = write_ir(core, self.model_path, xml, self.precision, self.keep_fp32, source_sha256)
        self.islands["ir"] = str(xml) if self.cache_dir is not None else None
        if self.cache_dir is not None:
            xml.with_suffix(".json").write_text(json.dumps(self.islands))
        return xml

    # -- running

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        if self.shapes == "static" and self.compiled_shape != images.shape:
            self._compile(images.shape)
        self.request.infer(dict(zip(INPUT_NAMES, (images, w_texture, w_style))), share_inputs=True)
        enhanced = self.request.get_tensor(OUTPUT_ENHANCED).data.astype(np.float32, copy=True)
        codes = self.request.get_tensor(OUTPUT_CODES).data.copy() if OUTPUT_CODES in self.output_names else None
        return InferResult(enhanced=enhanced, codes=codes)

    # -- reporting

    def precision_report(self) -> dict:
        """Counts of compute nodes by runtime precision (overall and per layer type), and the lookup nodes'."""
        runtime = self.compiled.get_runtime_model()
        rows = [r for r in map(runtime_row, runtime.get_ordered_ops()) if r["layer_type"] in COMPUTE_TYPES]
        by_type: dict[str, Counter] = {}
        for r in rows:
            by_type.setdefault(r["layer_type"], Counter())[r["precision"]] += 1
        lookup = [runtime_row(op) for op in lookup_runtime_ops(runtime)]
        return {
            "compute_nodes": dict(Counter(r["precision"] for r in rows)),
            "by_layer_type": {t: dict(c) for t, c in sorted(by_type.items())},
            "lookup": {r["name"]: {"layer_type": r["layer_type"], "precision": r["precision"]} for r in lookup},
        }

    def _describe(self) -> BackendInfo:
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # "f32", "bf16"
        report = self.precision_report()
        if self.precision == FP32:
            precision = FP32
        else:
            precision = BF16_MIXED if report["compute_nodes"].get("f32") else BF16
        return BackendInfo(
            name=self.name,
            device=f"{self.device} ({self.core.get_property(self.device, 'FULL_DEVICE_NAME')})",
            precision=precision,
            extra={
                "model": str(self.model_path),
                "openvino": self.ov_version,
                "inference_precision_hint": hint,
                "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
                "integrity": "payload hash verified" if self.verified else "unverified (the model records no payload hash)",
                "cache_notes": list(self.cache_notes),
                "input_shape": self.input_shape,
                "shapes": self.shapes,
                "ir": str(self.ir),
                "outputs": list(self.output_names),
                "fp32_islands": self.islands,
                "runtime_precision": report,
            },
        )

    def _close(self) -> None:
        self.request = self.compiled = self.compiled_shape = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
