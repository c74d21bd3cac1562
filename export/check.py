"""python -m export.check MODEL.onnx: will TensorRT's ONNX parser (10.x, 11.x) take this graph?

Checks every node against a table of the operators onnx-tensorrt supports (docs/operators.md, read for 10.1
and 10.15; see ../shared/notes/tensorrt.md section 4) and the constraints listed there: Reduce* and
Squeeze/Unsqueeze axes must be constants, no float64 tensors, Resize modes, LayerNormalization with one
output. It also enforces this project's graph contract: no ScatterND, ScatterElements, OneHot, Loop, If,
NonZero. INT64 graph I/O is a warning (the parser wants INT64 bindings for it). Exit status 1 on a problem.
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from contract import formats
from contract import cli as common
from contract.errors import EXIT_OK, EXIT_PARTIAL, InputError
from contract.integrity import check_onnx
from contract.precision_rules import GraphIndex, index_graph

# Operators the TensorRT ONNX parser imports (the part of docs/operators.md relevant to exported CNN/transformer
# graphs). Ops with extra conditions are checked in CONSTRAINTS below. The parser does take If, Loop, NonZero,
# OneHot and the scatters; FORBIDDEN_OPS rejects them for this project's graph.
TENSORRT_OPS = frozenset(
    """
    Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast CastLike Ceil Clip Concat
    Constant ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Einsum Elu Equal Erf Exp Expand
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater
    GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop MatMul Max MaxPool Mean Min Mod Mul Neg NonZero Not OneHot Or
    Pad Pow PRelu Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid
    Sign Sin Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose
    Trilu Unsqueeze Where Xor
    """.split()
)

# Not TensorRT's rule but this project's: the graph must be branch-free, loop-free and scatter-free
# (the one-hot lookup is what made the original's export slow and large).
FORBIDDEN_OPS = frozenset({"ScatterND", "ScatterElements", "OneHot", "Loop", "If", "NonZero"})

REDUCE_OPS = frozenset(op for op in TENSORRT_OPS if op.startswith("Reduce"))
FLOAT64 = onnx.TensorProto.DOUBLE


@dataclass
class CheckReport:
    path: str
    opset: int | None
    node_count: int
    histogram: list[tuple[str, int]]
    inputs: list[str]
    outputs: list[str]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"{self.path}: opset {self.opset}, {self.node_count} nodes, {len(self.histogram)} op types",
            f"inputs:  {'; '.join(self.inputs)}",
            f"outputs: {'; '.join(self.outputs)}",
            f"op histogram: {format_histogram(self.histogram)}",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines.append(f"TensorRT ONNX parser compatibility: {verdict}")
        return "\n".join(lines)


def op_histogram(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(op type, count) pairs, most frequent first."""
    return collections.Counter(node.op_type for node in model.graph.node).most_common()


def format_histogram(histogram: list[tuple[str, int]]) -> str:
    return ", ".join(f"{op} {n}" for op, n in histogram)


def onnx_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def describe_value(value: onnx.ValueInfoProto) -> str:
    t = value.type.tensor_type
    dims = ",".join(d.dim_param or str(d.dim_value) for d in t.shape.dim) if t.HasField("shape") else "?"
    return f"{value.name} {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else '?'} [{dims}]"


def axes_input_problem(node: onnx.NodeProto, facts: GraphIndex) -> str | None:
    """Reduce*/Squeeze/Unsqueeze: an axes input must be an initializer or Constant (TensorRT 10.x tables)."""
    axes = node.input[1] if len(node.input) > 1 else ""
    if axes:
        return None if facts.is_constant(axes) else f"{node.op_type} {node.name}: axes input '{axes}' is computed at run time; TensorRT needs it constant"
    if node.op_type == "Squeeze" and not any(a.name == "axes" for a in node.attribute) and not facts.is_static(node.input[0]):
        # Without axes the parser squeezes all size-1 dimensions, which it cannot know for dynamic shapes.
        return f"Squeeze {node.name}: no axes and input '{node.input[0]}' has a dynamic shape"
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def resize_problem(node: onnx.NodeProto, facts: GraphIndex) -> str | None:
    mode = attribute(node, "mode", b"nearest").decode()
    if mode not in ("nearest", "linear"):
        return f"Resize {node.name}: mode '{mode}' (TensorRT supports nearest and linear)"
    if attribute(node, "antialias", 0):
        return f"Resize {node.name}: antialias is not supported by TensorRT"
    policy = attribute(node, "keep_aspect_ratio_policy", b"stretch").decode()
    if policy != "stretch":
        return f"Resize {node.name}: keep_aspect_ratio_policy '{policy}' (TensorRT supports stretch only)"
    return None


def layernorm_problem(node: onnx.NodeProto, facts: GraphIndex) -> str | None:
    if any(node.output[1:]):
        return f"LayerNormalization {node.name}: only output Y is supported by TensorRT, but Mean/InvStdDev are used"
    return None


def scatternd_problem(node: onnx.NodeProto, facts: GraphIndex) -> str | None:
    reduction = attribute(node, "reduction", b"none").decode()
    return None if reduction == "none" else f"ScatterND {node.name}: reduction '{reduction}' (TensorRT: none only)"


def einsum_problem(node: onnx.NodeProto, facts: GraphIndex) -> str | None:
    equation = attribute(node, "equation", b"").decode()
    if any(c.isupper() or c == "." for c in equation):
        return f"Einsum {node.name}: equation '{equation}' needs TensorRT >= 10.12 (uppercase/ellipsis)"
    return None


CONSTRAINTS = {
    **{op: axes_input_problem for op in REDUCE_OPS | {"Squeeze", "Unsqueeze"}},
    "Resize": resize_problem,
    "LayerNormalization": layernorm_problem,
    "ScatterND": scatternd_problem,
    "Einsum": einsum_problem,
}


def float64_problems(model: onnx.ModelProto, facts: GraphIndex) -> list[str]:
    """TensorRT has no float64: initializers, Casts, Constants or inferred values of that type."""
    found = [t.name for t in model.graph.initializer if t.data_type == FLOAT64]
    found += [name for name, elem in facts.elem_type.items() if elem == FLOAT64 and not facts.is_constant(name)]
    for node in model.graph.node:
        if node.op_type == "Cast" and attribute(node, "to") == FLOAT64:
            found.append(f"{node.name} (Cast to double)")
        if node.op_type == "Constant" and (value := attribute(node, "value")) is not None and value.data_type == FLOAT64:
            found.append(f"{node.name} (double Constant)")
    if not found:
        return []
    return [f"float64 tensors are not supported by TensorRT: {', '.join(sorted(set(found))[:8])}{' ...' if len(found) > 8 else ''}"]


def node_problems(model: onnx.ModelProto, facts: GraphIndex, forbidden: frozenset[str]) -> list[str]:
    problems = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} {node.name}: custom domain '{node.domain}' is not an ONNX operator TensorRT parses")
            continue
        if node.op_type in forbidden:
            problems.append(f"{node.op_type} {node.name}: forbidden by the graph contract ({', '.join(sorted(forbidden))})")
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{node.op_type} {node.name}: not in the TensorRT ONNX parser's operator table")
        elif (check := CONSTRAINTS.get(node.op_type)) and (problem := check(node, facts)):
            problems.append(problem)
    return problems


def io_warnings(model: onnx.ModelProto, opset: int | None) -> list[str]:
    warnings = [
        f"{kind} '{v.name}' is INT64: TensorRT needs an INT64 binding for it (prefer INT32 I/O)"
        for kind, values in (("input", model.graph.input), ("output", model.graph.output))
        for v in values
        if v.type.tensor_type.elem_type == onnx.TensorProto.INT64
    ]
    if any(n.op_type == "GroupNormalization" for n in model.graph.node) and (opset or 0) >= 21:
        warnings.append("opset-21 GroupNormalization (per-channel scale/bias) needs TensorRT >= 10.9")
    if opset is not None and opset > 20:
        warnings.append(f"opset {opset}: TensorRT 10.0-10.x before 10.15 documents opsets 9-20 only")
    return warnings


def check_model(model: onnx.ModelProto, path: str = "<in memory>", *, forbidden=FORBIDDEN_OPS) -> CheckReport:
    """Run every check on a loaded model; shapes/types are inferred first so float64 values are found."""
    facts = index_graph(model)
    opset = onnx_opset(model)
    initializers = {t.name for t in model.graph.initializer}
    report = CheckReport(
        path=path,
        opset=opset,
        node_count=len(model.graph.node),
        histogram=op_histogram(model),
        inputs=[describe_value(v) for v in model.graph.input if v.name not in initializers],
        outputs=[describe_value(v) for v in model.graph.output],
    )
    report.problems += node_problems(model, facts, frozenset(forbidden))
    report.problems += float64_problems(model, facts)
    report.warnings += io_warnings(model, opset)
    return report


def load_onnx_file(path: str | Path) -> onnx.ModelProto:
    """An ONNX model from a file, or InputError saying what the file is instead (missing, a folder, empty, a
    checkpoint, text, ...). protobuf parses many non-ONNX bytes, an empty file included, into an empty model."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"ONNX file not found: {path}")
    kind = formats.detect(path)
    if kind not in (formats.ONNX_GRAPH, formats.UNKNOWN):  # an unknown start may still parse: let onnx judge
        raise InputError(f"{path} is {formats.a(kind)}, not an ONNX graph"
                         + ("; name the .onnx file in it" if kind == formats.FOLDER else ""))
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises unrelated types on a corrupt file
        raise InputError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node or not model.opset_import:
        raise InputError(f"{path} holds no ONNX graph (no nodes or no opset); export it again")
    check_onnx(model, path)
    return model


def check_file(path: str | Path, *, forbidden=FORBIDDEN_OPS, label: str | None = None) -> CheckReport:
    return check_model(load_onnx_file(path), label or str(path), forbidden=forbidden)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    p = common.parser("python -m export.check", __doc__)
    p.add_argument("onnx", help="the .onnx file to check")
    p.add_argument("--allow", action="append", default=[], metavar="OP", help="accept a contract-forbidden op (e.g. ScatterElements for the one-hot baseline); repeatable")
    args = p.parse_args(argv)
    unknown = sorted(set(args.allow) - FORBIDDEN_OPS)
    if unknown:
        p.error(f"--allow takes one of {', '.join(sorted(FORBIDDEN_OPS))}; got {', '.join(unknown)}")
    report = check_file(args.onnx, forbidden=FORBIDDEN_OPS - set(args.allow))
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
