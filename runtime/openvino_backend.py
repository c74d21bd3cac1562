"""OpenVINO backend (CPU): runs the exported graph (.onnx, or an OpenVINO IR .xml) in fp32 or bf16 with FP32 islands.

Precision is always set explicitly: OpenVINO's CPU plugin *defaults* to bf16 on any CPU with avx512_bf16 (AMD EPYC
included), so ``fp32`` compiles with ``INFERENCE_PRECISION_HINT=f32``.

``bf16`` compiles with ``INFERENCE_PRECISION_HINT=bf16`` and keeps the same nodes in fp32 as the FP16 graph of
``export.precision`` (the rule is reused, not rewritten: ``contract.precision_rules.classify``): the nearest-code
chain (codebook MatMul, bias Add, ArgMin -> TopK, Gather) and the normalisation statistics (LayerNorm and
InstanceNorm -> MVN, the IFT mean/std chains). Each ONNX node is mapped to the OpenVINO ops that implement it
(a LayerNormalization becomes MVN + Multiply + Add, an ArgMin TopK + Squeeze) through the tensor names OpenVINO
keeps, the ops are marked with rt_info ``precise_0`` and the model is saved as IR (``compress_to_fp16=False``) and
read back: OpenVINO 2026.3+ ignores the mark on an in-memory model but honours the serialized form. What actually
ran in which precision is read back from ``compiled.get_runtime_model()`` and reported in ``describe().extra``.

Model caching: ``cache_dir=None`` (default) caches nothing. With a folder, the marked IR (bf16) is written there once
per model content and island set, and OpenVINO's ``CACHE_DIR`` keeps the compiled blob there, so a second start
imports it instead of reading and compiling the graph.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from contract.files import update_digest
from contract.graph import BF16_MIXED, FP32, FP32_ISLANDS, INPUT_IMAGE, INPUT_NAMES, OUTPUT_CODES, OUTPUT_ENHANCED

from .backend import BackendBase, BackendError, BackendInfo, InferResult

PRECISIONS = ("fp32", "bf16")
OV_HINT = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = 'pip install "codeenhance-deploy[openvino]"'
# The rt_info key of the "keep original precision" mark, written to IR as DisablePrecisionConversion (2026.3+).
PRECISE_KEY = "precise_0"
# Reasons kept in fp32 here: the declared islands. "overflow" is an FP16 range rule (bf16 has fp32's range).
ISLAND_REASONS = tuple(FP32_ISLANDS)
# OpenVINO op types that do arithmetic worth reporting (the rest: shapes, reshapes, constants).
COMPUTE_TYPES = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "MVN", "Softmax", "TopK",
                 "Eltwise", "Subgraph", "Reduce", "Interpolate", "Gather", "DepthToSpace", "Deconvolution"}
LOOKUP_LAYER_TYPES = ("FullyConnected", "MatMul", "TopK", "Gather")


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendError(f"openvino: OpenVINO is not installed ({e}); install it with {INSTALL_HINT}") from e
    return ov


# ------------------------------------------------------------------------------------------- FP32 islands


def island_nodes(onnx_model, keep_fp32=()) -> dict[str, list[str]]:
    """ONNX node name -> reasons it stays fp32 under bf16: export.precision's lookup and normalisation rules,
    plus ``keep_fp32`` (op types or node names, as ``export.precision --keep-fp32``; reason "user").

    The "overflow" rule of the FP16 graph is left out: bf16 has fp32's range. ``onnx_model`` may have its
    initializers' data stripped (``skeleton``): the rules read names, types and shapes only.
    """
    # Imported here: the rule module needs onnx (a core dependency), not torch; keep the runtime's import light.
    from contract.precision_rules import PrecisionError, index_graph, island_rules, reasons_by_node, user_nodes

    ix = index_graph(onnx_model)
    try:
        user = user_nodes(ix, list(keep_fp32))
    except PrecisionError as e:
        raise ValueError(f"openvino: keep_fp32: {e}") from e
    return reasons_by_node(ix, {**island_rules(ix), "user": user})


def skeleton(onnx_path: Path):
    """The ONNX graph without its weights' bytes (names, types and shapes kept): the island rules and the name
    mapping need no weights, and the bytes would double the peak memory of loading (166 MB official model)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            tensor.ClearField(field)
    return model


def ov_ops_for(ov_model, onnx_model, names) -> dict[str, list]:
    """ONNX node name -> the OpenVINO ops of ``ov_model`` that implement it.

    OpenVINO names the op making an ONNX node's output after the node and keeps the ONNX tensor names on outputs;
    the ops a node is decomposed into (MVN_123, TopK_45) get generated names. So: start at the ops producing the
    node's output tensors and walk up through unnamed tensors until a tensor with an ONNX name (the node's inputs,
    or any other node's output), a Constant or a Parameter.
    """
    producer, by_friendly = {}, {}
    for op in ov_model.get_ordered_ops():
        by_friendly[op.get_friendly_name()] = op
        for out in op.outputs():
            for t in out.get_names():
                producer[t] = out
    nodes = {n.name: n for n in onnx_model.graph.node if n.name in names}
    found = {}
    for name, node in nodes.items():
        outputs = set(node.output)
        stack = [producer[t].get_node() for t in node.output if t in producer]
        if name in by_friendly:
            stack.append(by_friendly[name])
        ops, seen = [], set()
        while stack:
            op = stack.pop()
            if id(op) in seen or op.get_type_name() in ("Constant", "Parameter", "Result"):
                continue
            seen.add(id(op))
            ops.append(op)
            for inp in op.inputs():
                src = inp.get_source_output()
                tensor_names = set(src.get_names())
                if tensor_names and not tensor_names & outputs:
                    continue  # an ONNX tensor made elsewhere: the node's boundary
                stack.append(src.get_node())
        found[name] = ops
    return found


def mark(op) -> None:
    op.get_rt_info()[PRECISE_KEY] = ""


def mark_islands(ov_model, onnx_model, keep: dict[str, list[str]]) -> dict[str, str]:
    """Mark the OpenVINO ops of the ``keep`` ONNX nodes, with the bias of each marked MatMul folded into it
    (``fold_bias``); returns OpenVINO friendly name -> ONNX node name of what was marked."""
    marked, matmuls = {}, []
    for onnx_name, ops in ov_ops_for(ov_model, onnx_model, keep).items():
        for op in ops:
            mark(op)
            marked[op.get_friendly_name()] = onnx_name
            if op.get_type_name() == "MatMul":
                matmuls.append(op)
    for op in matmuls:
        for new in fold_bias(op):
            marked[new.get_friendly_name()] = "bias folded into a MatMul"
    return marked


def constant_value(output, depth: int = 4) -> np.ndarray | None:
    """The value of a tensor computed from constants only (Constant, and Multiply/Add/Convert of such), else None:
    the ONNX frontend writes a Gemm as MatMul, Multiply(alpha), Add(Multiply(beta, C))."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data()
    if kind not in ("Multiply", "Add") or depth == 0:
        return None
    a = constant_value(node.input_value(0), depth - 1)
    b = None if a is None else constant_value(node.input_value(1), depth - 1)
    if b is None:
        return None
    return a * b if kind == "Multiply" else a + b


def single_consumer(output):
    targets = list(output.get_target_inputs())
    return targets[0] if len(targets) == 1 else None


def fold_bias(matmul) -> list:
    """MatMul(x, W) [* alpha] + b (W, alpha, b constants) -> MatMul(Concat(x, 1), [alpha W; b]), all marked;
    returns the new ops.

    The CPU plugin turns MatMul + constant-bias Add into one *new* FullyConnected node, and the fp32 mark does not
    survive the replacement (it is not copyable): the lookup's distances (and every Gemm) ran bf16. With the bias
    inside the product there is nothing to fuse and the marked MatMul becomes a FullyConnected that keeps its
    mark (measured, 2026.4.1). The result is the same up to float rounding (the bias is summed in the f32 product).
    """
    import openvino.opset13 as ops

    attrs = matmul.get_attributes()
    w = constant_value(matmul.input_value(1))
    if w is None or w.ndim != 2 or attrs["transpose_a"] or matmul.input_value(0).get_partial_shape().rank.is_dynamic:
        return []
    w = w.T if attrs["transpose_b"] else w  # [D, K]
    consumer = single_consumer(matmul.output(0))
    while consumer is not None and consumer.get_node().get_type_name() == "Multiply":  # Gemm's alpha
        scale = constant_value(consumer.get_node().input_value(1 - consumer.get_index()))
        if scale is None or scale.size != 1:
            return []
        w = w * scale.reshape(())
        consumer = single_consumer(consumer.get_node().output(0))
    if consumer is None or consumer.get_node().get_type_name() != "Add":
        return []
    add = consumer.get_node()
    b = constant_value(add.input_value(1 - consumer.get_index()))
    if b is None or b.size != w.shape[1]:
        return []
    x = matmul.input_value(0)
    lead = ops.slice(ops.shape_of(x), ops.constant(np.array([0], np.int64)), ops.constant(np.array([-1], np.int64)),
                     ops.constant(np.array([1], np.int64)))
    ones = ops.broadcast(ops.constant(np.ones(1, w.dtype)), ops.concat([lead, ops.constant(np.array([1], np.int64))], 0))
    augmented = ops.concat([x, ones], -1)
    weights = np.concatenate([w, b.reshape(1, -1).astype(w.dtype)], 0)
    folded = ops.matmul(augmented, ops.constant(np.ascontiguousarray(weights)), False, False)
    folded.set_friendly_name(add.get_friendly_name())
    folded.output(0).set_names(add.output(0).get_names())
    add.output(0).replace(folded.output(0))
    new = [lead, ones, augmented, folded]
    for op in new:
        mark(op)
    return new


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
    """``precision``: "fp32" or "bf16" (mixed: FP32 islands, see the module docstring). ``threads``: inference
    threads (None: OpenVINO's default, all cores). ``cache_dir``: model cache folder (None: no caching).
    ``keep_fp32``: extra op types or ONNX node names to keep fp32 under bf16 (e.g. ["Softmax"]).
    ``device``: OpenVINO device name; the islands and precision hints are written for "CPU".
    """

    name = "openvino"

    def __init__(self, model_path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, device: str = "CPU", keep_fp32=()):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"openvino: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if threads is not None and threads < 0:
            raise ValueError(f"openvino: threads must be >= 0, got {threads}")
        self.model_path = Path(model_path)
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.keep_fp32 = tuple(keep_fp32)
        self.compiled = self.request = None
        self.islands: dict = {}

    # -- loading

    def _config(self) -> dict:
        config = {"INFERENCE_PRECISION_HINT": OV_HINT[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir is not None:
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
        try:
            if self.precision == "bf16" and suffix == ".onnx":
                self.compiled = self._compile_marked(ov, core)
            else:
                # A path, not a Model: with CACHE_DIR a second start imports the blob without reading the graph.
                # An IR keeps the marks it was saved with (e.g. by this backend into cache_dir).
                self.compiled = core.compile_model(str(self.model_path), self.device, self._config())
        except (BackendError, ValueError):
            raise
        except Exception as e:  # OpenVINO raises RuntimeError/GeneralFailure with the useful text
            raise BackendError(f"openvino: cannot load {self.model_path}: {e}") from e
        inputs = {i.get_any_name() for i in self.compiled.inputs}
        outputs = [o.get_any_name() for o in self.compiled.outputs]
        if set(INPUT_NAMES) - inputs or OUTPUT_ENHANCED not in outputs:
            raise BackendError(
                f"openvino: {self.model_path} does not follow the CodeEnhance graph contract: expected inputs "
                f"{list(INPUT_NAMES)} and an output 'enhanced', found inputs {sorted(inputs)}, outputs {outputs}; "
                "export it with python -m export.onnx"
            )
        self.output_names = [OUTPUT_ENHANCED] + ([OUTPUT_CODES] if OUTPUT_CODES in outputs else [])
        self.request = self.compiled.create_infer_request()

    def _compile_marked(self, ov, core):
        """bf16 from an ONNX graph: mark the FP32 islands, write IR, read it back, compile."""
        if self.cache_dir is not None:
            key = update_digest(hashlib.sha256(), self.model_path)
            key.update(repr((sorted(ISLAND_REASONS), self.keep_fp32, self.ov_version)).encode())
            xml = self.cache_dir / f"{self.model_path.stem}-bf16-{key.hexdigest()[:16]}.xml"
            if xml.is_file() and xml.with_suffix(".bin").is_file():
                try:
                    self.islands = json.loads(xml.with_suffix(".json").read_text())
                except (OSError, ValueError):
                    self.islands = {"ir": str(xml)}
                self.islands["reused_ir"] = True
                return core.compile_model(str(xml), self.device, self._config())
            return self._write_marked_ir(ov, core, xml)
        with tempfile.TemporaryDirectory(prefix="codeenhance-ov-") as tmp:
            return self._write_marked_ir(ov, core, Path(tmp) / f"{self.model_path.stem}-bf16.xml")

    def _write_marked_ir(self, ov, core, xml: Path):
        onnx_model = skeleton(self.model_path)
        keep = island_nodes(onnx_model, self.keep_fp32)
        ov_model = core.read_model(str(self.model_path))
        marked = mark_islands(ov_model, onnx_model, keep)
        del onnx_model
        self.islands = {"onnx_nodes": len(keep), "reasons": dict(Counter(r for why in keep.values() for r in why)),
                        "ov_ops_marked": len(marked), "ir": str(xml) if self.cache_dir is not None else None}
        # Write to a temporary name and rename: another process may read the cache at the same time.
        part = xml.with_name(xml.stem + f".{os.getpid()}.part.xml")
        ov.save_model(ov_model, str(part), compress_to_fp16=False)
        del ov_model
        part.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        part.replace(xml)
        if self.cache_dir is not None:
            xml.with_suffix(".json").write_text(json.dumps(self.islands))
        # Re-read: 2026.3+ honours the mark only in its serialized form (DisablePrecisionConversion).
        return core.compile_model(str(xml), self.device, self._config())

    # -- running

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        self.request.infer(dict(zip(INPUT_NAMES, (images, w_texture, w_style))), share_inputs=True)
        enhanced = self.request.get_tensor(OUTPUT_ENHANCED).data.astype(np.float32, copy=True)
        codes = self.request.get_tensor(OUTPUT_CODES).data.copy() if OUTPUT_CODES in self.output_names else None
        return InferResult(enhanced=enhanced, codes=codes)

    # -- reporting

    def runtime_precisions(self) -> list[dict]:
        """What ran, per node of the compiled model: layer type, runtime precision, original op names."""
        return [runtime_row(op) for op in self.compiled.get_runtime_model().get_ordered_ops()]

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
        if self.precision == "fp32":
            precision = FP32
        else:
            precision = BF16_MIXED if report["compute_nodes"].get("f32") else "bf16"
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
                "input_shape": str(self.compiled.input(INPUT_IMAGE).get_partial_shape()),
                "outputs": list(self.output_names),
                "fp32_islands": self.islands,
                "runtime_precision": report,
            },
        )

    def _close(self) -> None:
        self.request = self.compiled = None
