"""Which nodes of a CodeEnhance graph stay FP32 in the mixed-precision graph, and why (see export.precision).

A ``GraphIndex`` of producers, consumers and element types, then one function per rule: the nearest-code
lookup, normalisation statistics, calibrated overflow and the user's --keep-fp32 list.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from .errors import InputError
from .graph import FP32_ISLANDS

FP16_MAX = float(np.finfo(np.float16).max)
FLOAT = TensorProto.FLOAT
REASONS = (*FP32_ISLANDS, "overflow", "user")  # the islands of every mixed-precision form, then the FP16-only rules

NORM_OPS = {"GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
            "MeanVarianceNormalization", "LpNormalization", "RMSNormalization"}
# Ops on the path from the quantizer input z to ArgMin: reshapes, the squared norm, the codebook product, sums.
LOOKUP_PATH_OPS = {"Add", "Sub", "Mul", "Neg", "Pow", "ReduceSum", "ReduceSumSquare", "MatMul", "Gemm",
                   "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
INDEX_PASS_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"}
STAT_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"}
# Scalar-per-channel arithmetic after a reduction: unbiased correction, + eps, sqrt.
STAT_FORWARD_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Max", "Cast"}


class PrecisionError(InputError):
    """A conversion that cannot be done (input, output, options), with the reason."""


@dataclass
class GraphIndex:
    """Nodes, producers, consumers, element types and shapes of one graph's tensors (from shape inference): the
    one ONNX graph index, read by the FP32-island rules and by export/check.py's TensorRT constraints."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    by_name: dict[str, onnx.NodeProto]
    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    elem_type: dict[str, int]
    constants: set[str]
    shapes: dict[str, list]  # inferred dims, None where symbolic

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def is_static(self, name: str) -> bool:
        shape = self.shapes.get(name)
        return shape is not None and all(d is not None for d in shape)

    def is_float(self, name: str) -> bool:
        return self.elem_type.get(name) == FLOAT

    def float_inputs(self, node) -> list[str]:
        """Non-constant FP32 inputs: the activations a node reads."""
        return [i for i in node.input if self.is_float(i) and i not in self.constants]

    def computes_float(self, node) -> bool:
        return any(self.is_float(o) for o in node.output)

    def has_precision(self, node) -> bool:
        """Float arithmetic, or an ArgMin/ArgMax comparing floats; shape arithmetic has no precision to set."""
        return self.computes_float(node) or node.op_type in ("ArgMin", "ArgMax")

    @property
    def activations(self) -> list[str]:
        """FP32 tensors computed by nodes: what calibration measures."""
        return [t for n in self.nodes for t in n.output if self.is_float(t) and t not in self.constants]


def index_graph(model: onnx.ModelProto) -> GraphIndex:
    typed = onnx.shape_inference.infer_shapes(model)
    values = (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)
    elem_type = {v.name: v.type.tensor_type.elem_type for v in values}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in values if v.type.tensor_type.HasField("shape")}
    elem_type.update({t.name: t.data_type for t in model.graph.initializer})
    constants = {t.name for t in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for node in nodes:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
        if node.op_type == "Constant":
            constants.update(node.output)
            elem_type.update((node.output[0], a.t.data_type) for a in node.attribute if a.name == "value")
    return GraphIndex(model, nodes, {n.name: n for n in nodes}, producer, consumers, elem_type, constants, shapes)


def walk_up(ix: GraphIndex, tensors, accept) -> set[str]:
    """Names of the producers reached from ``tensors`` through nodes for which ``accept(node)`` holds."""
    found, stack = set(), list(tensors)
    while stack:
        node = ix.producer.get(stack.pop())
        if node is not None and node.name not in found and accept(node):
            found.add(node.name)
            stack.extend(i for i in node.input if i not in ix.constants)
    return found


# ------------------------------------------------------------------------------------------------ rules


def lookup_nodes(ix: GraphIndex) -> set[str]:
    """ArgMin/ArgMax, the distance subgraph feeding it (back to the quantizer input z) and the codebook Gather."""
    keep: set[str] = set()
    for arg in (n for n in ix.nodes if n.op_type in ("ArgMin", "ArgMax")):
        keep |= {arg.name} | walk_up(ix, arg.input[:1], lambda n: n.op_type in LOOKUP_PATH_OPS)
        keep |= codebook_gathers(ix, arg.output[0])
    return keep


def codebook_gathers(ix: GraphIndex, index: str) -> set[str]:
    """Gathers of a constant float table by ``index`` (possibly reshaped): the quantized codebook rows."""
    found, stack = set(), [index]
    while stack:
        for node in ix.consumers.get(stack.pop(), []):
            if node.op_type in INDEX_PASS_OPS:
                stack.extend(node.output)
            elif node.op_type == "Gather" and node.input[0] in ix.constants and ix.is_float(node.input[0]):
                found.add(node.name)
    return found


def normalisation_nodes(ix: GraphIndex, exclude: set[str]) -> set[str]:
    """Normalisation ops plus the statistics chains written out as ops (the IFT mean/std).

    A chain is a float reduction, the centred square it reduces (Sub(x, mean) then Mul/Pow), and the arithmetic
    after it that mixes only statistics and shape-derived counts (N/(N-1), + eps, Sqrt). The count N grows with
    the image (about 130k at 1080p), past FP16's 65504, so its Cast and arithmetic stay FP32 too.
    """
    reductions = {n.name for n in ix.nodes if n.op_type in STAT_REDUCTIONS and n.name not in exclude and ix.computes_float(n)}
    made_by = lambda t, names: t in ix.producer and ix.producer[t].name in names
    stats = set(reductions)
    for red in reductions:
        square = ix.producer.get(ix.by_name[red].input[0])
        if square is not None and (square.op_type == "Pow" or square.op_type == "Mul" and square.input[0] == square.input[1]):
            stats.add(square.name)
            centre = ix.producer.get(square.input[0])
            if centre is not None and centre.op_type == "Sub" and any(made_by(i, reductions) for i in centre.input):
                stats.add(centre.name)
    counts = shape_derived_floats(ix)
    for node in ix.nodes:  # graph order is topological: one forward pass
        inputs = ix.float_inputs(node)
        if node.op_type in STAT_FORWARD_OPS and any(made_by(i, stats) for i in inputs) and all(
                made_by(i, stats) or i in counts for i in inputs):
            stats.add(node.name)
    stats |= walk_up(ix, [i for n in stats for i in ix.by_name[n].input if i in counts],
                     lambda n: any(o in counts for o in n.output))
    return stats | {n.name for n in ix.nodes if n.op_type in NORM_OPS}


def shape_derived_floats(ix: GraphIndex) -> set[str]:
    """Float tensors computed only from tensor shapes (Cast of an integer, then arithmetic with constants)."""
    derived: set[str] = set()
    for node in (n for n in ix.nodes if ix.computes_float(n)):
        ins = [i for i in node.input if i and i not in ix.constants]
        from_int = node.op_type == "Cast" and ins and ix.elem_type.get(ins[0], FLOAT) not in (FLOAT, 0)
        if from_int or (ins and node.op_type in STAT_FORWARD_OPS and all(i in derived for i in ins)):
            derived.update(o for o in node.output if ix.is_float(o))
    return derived


def node_absmax(node: onnx.NodeProto, absmax: dict[str, float]) -> float:
    """The largest calibrated |x| over a node's inputs and outputs (0 for tensors never seen)."""
    return max((absmax.get(t, 0.0) for t in (*node.input, *node.output)), default=0.0)


def overflow_nodes(ix: GraphIndex, absmax: dict[str, float], data_max: float) -> dict[str, float]:
    """Float-computing nodes whose inputs or outputs reached |x| > data_max, or with initializers beyond FP16."""
    too_big = {t.name for t in ix.model.graph.initializer
               if t.data_type == FLOAT and np.abs(onnx.numpy_helper.to_array(t)).max(initial=0.0) > FP16_MAX}
    found = {}
    for node in (n for n in ix.nodes if n.op_type != "Constant" and ix.computes_float(n)):
        peak = max([node_absmax(node, absmax)] + [np.inf for i in node.input if i in too_big])
        if not peak <= data_max:  # also NaN
            found[node.name] = peak
    return found


def user_nodes(ix: GraphIndex, tokens: list[str]) -> set[str]:
    """Nodes named by --keep-fp32: op types (exact) or node names (exact or shell-style pattern)."""
    keep = set()
    for token in tokens:
        hits = {n.name for n in ix.nodes if n.op_type == token or fnmatch.fnmatchcase(n.name, token)}
        if not hits:
            ops = sorted({n.op_type for n in ix.nodes})
            raise PrecisionError(f"--keep-fp32 {token!r} matches no op type or node name in the graph; op types: {', '.join(ops)}")
        keep |= hits
    return keep


def island_rules(ix: GraphIndex) -> dict[str, set[str]]:
    """Each island of contract.graph.FP32_ISLANDS -> its nodes in this graph (FP16 graph and OpenVINO bf16 alike)."""
    lookup = lookup_nodes(ix)
    rules = {"lookup": lookup, "normalisation": normalisation_nodes(ix, exclude=lookup)}
    assert tuple(rules) == tuple(FP32_ISLANDS), "one rule per declared island"
    return rules


def reasons_by_node(ix: GraphIndex, rules: dict[str, set[str]]) -> dict[str, list[str]]:
    """node name -> the rules (in ``rules`` order) that keep it in FP32, for float nodes that any rule names."""
    reasons = {n.name: [r for r in rules if n.name in rules[r]] for n in ix.nodes if ix.has_precision(n)}
    return {name: why for name, why in reasons.items() if why}


def classify(ix: GraphIndex, absmax: dict[str, float], data_max: float, user: set[str] = frozenset()) -> dict[str, list[str]]:
    """node name -> the reasons it stays FP32 (in REASONS order); ``user``: names from user_nodes."""
    rules = {**island_rules(ix), "overflow": set(overflow_nodes(ix, absmax, data_max)), "user": set(user)}
    return reasons_by_node(ix, rules)
