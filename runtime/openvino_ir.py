"""The OpenVINO IR that the openvino backend compiles, written from an exported .onnx graph.

fp32: the graph as OpenVINO reads it. bf16: the FP32 islands of ``contract.precision_rules`` (the same rule as the
FP16 graph of ``export.precision``: the nearest-code chain and the normalisation statistics) marked to stay fp32,
and the weights of every other Convolution/MatMul stored as bf16 (what those ops compute with anyway: the IR and the
weights the compiled model holds are half the size, and so is the peak memory of loading; README, "OpenVINO on the
CPU", has the figures).

Marks: each ONNX node is mapped to the OpenVINO ops that implement it (a LayerNormalization becomes MVN + Multiply +
Add, an ArgMin TopK + Squeeze) through the tensor names OpenVINO keeps, and the ops get rt_info ``precise_0``.
OpenVINO 2026.3+ ignores that mark on an in-memory model but honours its serialized form
(DisablePrecisionConversion), so the backend always compiles the saved IR. bf16 weights are a bf16 Constant and a
Convert marked ``decompression`` (as OpenVINO's own compressed IRs write it) so the CPU plugin keeps them bf16
instead of folding them back to fp32; Python cannot set that mark, so it is written into the IR's XML and checked
on reading back. The IR carries its provenance record (``contract.provenance``) in its rt_info section
``codeenhance``: the graph it was written from, that graph's checkpoint, the writer's fingerprint, its precision and
its payload hash.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from contract.errors import InputError
from contract.files import file_sha256
from contract.integrity import IR_SECTION, PLACEHOLDER, seal_ir
from contract.graph import BF16, FP32_ISLANDS, reported_precision
from contract.provenance import Kind, Provenance, code_fingerprint

from .backend import BackendError

INSTALL_HINT = 'pip install "codeenhance-deploy[openvino]"'
# The rt_info key of the "keep original precision" mark, written to IR as DisablePrecisionConversion (2026.3+).
PRECISE_KEY = "precise_0"
# What write_ir produces, and the code that decides it: writer_fingerprint() hashes both.
IR_FORMAT = 2  # 2: bf16 weights
IR_SOURCES = (Path(__file__), Path(__file__).parents[1] / "contract" / "precision_rules.py")
BF16_WEIGHT_PREFIX = "codeenhance_bf16_weights_"
# The decompression mark as an IR attribute, and its rt_info key once read.
DECOMPRESSION_ATTRIBUTE, DECOMPRESSION_KEY = "decompression", "decompression_0"
# Weights smaller than this stay fp32 (biases, norm scales: nothing to save).
BF16_WEIGHT_MIN_SIZE = 4096
WEIGHT_CONSUMERS = ("Convolution", "GroupConvolution", "MatMul")


def writer_fingerprint(ov_version: str) -> str:
    """What an IR written now depends on besides its graph and options: the format, the OpenVINO version, the
    declared islands and the source of the island rules and of this writer. Cached IRs are keyed by it, so a change
    to any of them writes the IR again."""
    return code_fingerprint(IR_SOURCES, IR_FORMAT, ov_version, tuple(FP32_ISLANDS))


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
        raise InputError(f"openvino: keep_fp32: {e}") from e
    return reasons_by_node(ix, {**island_rules(ix), "user": user})


def skeleton(onnx_path: Path):
    """The ONNX graph without its weights' bytes (names, types and shapes kept): the island rules and the name
    mapping need no weights, and the bytes would double the peak memory of loading."""
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


# ------------------------------------------------------------------------------------------- bf16 weights


def is_marked(op) -> bool:
    info = op.get_rt_info()
    return PRECISE_KEY in info or "DisablePrecisionConversion" in info


def store_weights_bf16(ov_model) -> int:
    """Replace each large fp32 weight read only by unmarked Convolution/MatMul ops with a bf16 Constant + Convert
    (tagged for the decompression mark, see tag_decompression); returns how many."""
    import openvino as ov
    import openvino.opset13 as ops

    count = 0
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32:
            continue
        if not op.get_output_partial_shape(0).is_static or int(np.prod(list(op.get_output_shape(0)))) < BF16_WEIGHT_MIN_SIZE:
            continue
        readers = [t.get_node() for t in op.output(0).get_target_inputs()]
        if not readers or any(r.get_type_name() not in WEIGHT_CONSUMERS or is_marked(r) for r in readers):
            continue
        weights = ops.constant(op.get_data(), dtype=ov.Type.bf16)
        convert = ops.convert(weights, ov.Type.f32)
        convert.set_friendly_name(f"{BF16_WEIGHT_PREFIX}{count}")
        op.output(0).replace(convert.output(0))
        count += 1
    return count


def tag_decompression(xml: Path) -> int:
    """Write the ``decompression`` mark on the Converts store_weights_bf16 made; returns how many."""
    tree = ET.parse(xml)
    count = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") == "Convert" and layer.get("name", "").startswith(BF16_WEIGHT_PREFIX):
            rt_info = layer.find("rt_info")
            if rt_info is None:
                rt_info = ET.Element("rt_info")
                layer.insert(1, rt_info)  # after <data>, where OpenVINO writes it
            ET.SubElement(rt_info, "attribute", {"name": DECOMPRESSION_ATTRIBUTE, "version": "0"})
            count += 1
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    return count


def decompression_marks(ov_model) -> int:
    """How many of the bf16-weight Converts carry the decompression mark after reading the IR back."""
    return sum(1 for op in ov_model.get_ordered_ops()
               if op.get_friendly_name().startswith(BF16_WEIGHT_PREFIX) and DECOMPRESSION_KEY in op.get_rt_info())


# ------------------------------------------------------------------------------------------- writing the IR


# OpenVINO keeps an ONNX graph's metadata (our record among it) in this rt_info section of the model it reads.
ONNX_METADATA_SECTION = "framework"


def rt_record(ov_model, section: str = IR_SECTION, kind: str = Kind.OPENVINO_IR) -> Provenance:
    """The provenance record in an rt_info section (every field None where there is none)."""
    return Provenance.from_strings({key: ov_model.get_rt_info([section, key]).astype(str)
                                    for key in Provenance.keys() if ov_model.has_rt_info([section, key])}, kind)


def new_ir_record(ov_model, source_sha256: str, precision: str, ov_version: str) -> Provenance:
    """The record of an IR written now from ``ov_model``, read from the graph whose file has ``source_sha256`` (the
    graph's checkpoint and model config carried over)."""
    graph = rt_record(ov_model, ONNX_METADATA_SECTION, Kind.ONNX)
    return graph.with_(kind=Kind.OPENVINO_IR, source_sha256=source_sha256, precision=reported_precision(precision),
                       exporter_fingerprint=writer_fingerprint(ov_version), payload_sha256=None)


def write_ir(core, onnx_path: Path, xml: Path, precision: str, keep_fp32=(), source_sha256: str | None = None) -> dict:
    """Convert the graph at ``onnx_path`` to an IR at ``xml`` (and .bin) for ``precision`` ("fp32" or "bf16");
    returns what was done (islands, marked ops, bf16 weights). The files appear complete or not at all.
    ``source_sha256``: the graph file's sha256 when the caller has it already (else it is computed)."""
    import openvino as ov

    ov_model = core.read_model(str(onnx_path))
    facts: dict = {}
    if precision == BF16:
        onnx_model = skeleton(onnx_path)
        keep = island_nodes(onnx_model, keep_fp32)
        marked = mark_islands(ov_model, onnx_model, keep)
        del onnx_model
        facts = {"onnx_nodes": len(keep), "reasons": dict(Counter(r for why in keep.values() for r in why)),
                 "ov_ops_marked": len(marked), "bf16_weights": store_weights_bf16(ov_model)}
    # The payload hash is sealed with its real value once the files are final (contract.integrity.seal_ir).
    record = new_ir_record(ov_model, source_sha256 or file_sha256(onnx_path), precision,
                           ov.get_version()).with_(payload_sha256=PLACEHOLDER)
    for key, value in record.to_strings().items():
        ov_model.set_rt_info(value, [IR_SECTION, key])
    # Write to a temporary name and rename: another process may read a cache folder at the same time.
    part = xml.with_name(xml.stem + f".{os.getpid()}.part.xml")
    try:
        ov.save_model(ov_model, str(part), compress_to_fp16=False)
        del ov_model
        tagged = tag_decompression(part) if facts.get("bf16_weights") else 0
        if tagged != facts.get("bf16_weights", 0):
            raise BackendError(f"openvino: tagged {tagged} of {facts['bf16_weights']} bf16 weights in {part}")
        if tagged and decompression_marks(core.read_model(str(part))) != tagged:
            raise BackendError(f"openvino: OpenVINO {ov.get_version()} does not read back the decompression mark "
                               f"of bf16 weights ({part}); report it with this version")
        seal_ir(part)
        part.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        part.replace(xml)
    finally:
        part.unlink(missing_ok=True)
        part.with_suffix(".bin").unlink(missing_ok=True)
    return facts
