"""python -m export.precision model.onnx --out model_fp16.onnx: an FP16 graph with FP32 islands, FP32 I/O.

TensorRT 11 has no FP16 builder flag: precision must be in the ONNX graph (FP16 tensors plus Casts). This
tool keeps in FP32, and says why in its report:
  lookup         the nearest-code distance (||z||^2, the codebook MatMul, the Adds), its ArgMin and the
                 Gather of codebook rows: FP16 distances flip near-tie codes;
  normalisation  GroupNorm/InstanceNorm/LayerNorm and the IFT mean/std chains (ReduceMean, squares,
                 variance, count N from the shape, Sqrt): squares and sums overflow or lose precision;
  overflow       nodes whose inputs or outputs reach |x| > --data-max on the calibration images (FP32 graph
                 run in ONNX Runtime), and nodes with initializers beyond the FP16 range;
  user           --keep-fp32 op types or node names.
Everything else runs in FP16. Casts are inserted by NVIDIA ModelOpt AutoCast when it is installed, else by
onnxconverter-common (--backend). The result is checked to load and run in ONNX Runtime with the original
I/O names and types before it is moved into place.
"""
from __future__ import annotations

import copy
import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from contract import cli as common
from contract.errors import EXIT_OK, InputError
from contract.files import AtomicOutput, file_sha256
from contract.integrity import seal_onnx
from contract.graph import FP16, FP32, check_io, reported_precision
from contract.provenance import onnx_record

from .check import load_onnx_file

from . import fidelity
from .dims import unname_derived_dims
from contract.precision_rules import (
    FLOAT, FP16_MAX, REASONS, GraphIndex, PrecisionError, classify, index_graph, node_absmax, user_nodes,
)

DEFAULT_DATA_MAX = 512.0  # AutoCast's default: above 512 the FP16 step is 0.5 or more
BACKENDS = ("auto", "autocast", "onnxconverter")
# Its [onnx] extra would pull onnxruntime-gpu, cupy and an older onnx pin: these are all AutoCast imports.
AUTOCAST_PACKAGES = "pip install --no-deps nvidia-modelopt==0.47.0 onnx-graphsurgeon nvidia-ml-py lief"

# ------------------------------------------------------------------------------------------- conversion


def pick_backend(backend: str) -> str:
    """AutoCast when asked for or, with 'auto', when nvidia-modelopt imports; else onnxconverter-common."""
    if backend == "onnxconverter":
        return backend
    try:
        import modelopt.onnx.autocast  # noqa: F401  (optional, see AUTOCAST_PACKAGES)
    except Exception as e:
        if backend == "autocast":
            raise PrecisionError(f"--backend autocast needs {AUTOCAST_PACKAGES} ({type(e).__name__}: {e})") from e
        return "onnxconverter"
    return "autocast"


def converter_version(backend: str = "auto") -> str:
    """Which converter ``convert_file(backend=...)`` would use, with its package version, e.g. 'autocast 0.47.0':
    the same FP32 graph gives a different FP16 graph with another converter, so reuse of FP16 files keys on it."""
    backend = pick_backend(backend)
    if backend == "autocast":
        import modelopt

        return f"autocast {modelopt.__version__}"
    import onnxconverter_common

    return f"onnxconverter {onnxconverter_common.__version__}"


def convert(src: Path, model: onnx.ModelProto, fp32_nodes: set[str], backend: str, plain: bool = False) -> onnx.ModelProto:
    """FP16 graph with ``fp32_nodes`` kept, FP32 I/O. ``plain``: the library's own all-FP16 conversion."""
    try:
        if backend == "autocast":
            from modelopt.onnx.autocast import convert_to_mixed_precision
            from modelopt.onnx.autocast.logging_config import configure_logging

            configure_logging("ERROR")  # it logs every node at INFO; the report says what matters
            # data_max=inf: calibration is done here (AutoCast's reference run holds every activation in memory).
            converted = convert_to_mixed_precision(
                onnx_path=str(src), low_precision_type="fp16", keep_io_types=True, data_max=np.inf,
                init_max=None if plain else FP16_MAX, nodes_to_exclude=[f"^{re.escape(n)}$" for n in sorted(fp32_nodes)])
        else:
            from onnxconverter_common import float16

            options = {} if plain else {"node_block_list": sorted(fp32_nodes), "max_finite_val": FP16_MAX, "min_positive_val": 6e-8}
            source = copy.deepcopy(model) if plain else unshare_initializers(model, fp32_nodes)
            with warnings.catch_warnings():  # one warning per clamped tiny weight
                warnings.simplefilter("ignore")
                converted = float16.convert_float_to_float16(source, keep_io_types=True, **options)
    except Exception as e:
        raise PrecisionError(f"the {backend} conversion failed: {type(e).__name__}: {str(e)[:400]}") from e
    # Converters leave stale intermediate shapes, which make ONNX Runtime warn about buffer reuse: infer afresh,
    # then drop the dim names as export.onnx does (they make ONNX Runtime hold freed buffers, see unname_derived_dims).
    del converted.graph.value_info[:]
    return unname_derived_dims(onnx.shape_inference.infer_shapes(converted))


def unshare_initializers(model: onnx.ModelProto, fp32_nodes: set[str]) -> onnx.ModelProto:
    """A copy in which FP32-kept nodes read their own copy of any float initializer that FP16 nodes also read.

    onnxconverter-common converts a shared initializer once, for all readers, and then an FP32 node gets an
    FP16 constant (ONNX Runtime: "Type parameter (T) ... bound to different types"). AutoCast does this itself.
    """
    model = copy.deepcopy(model)
    inits = {t.name: t for t in model.graph.initializer if t.data_type == FLOAT}
    readers: dict[str, set[bool]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, set()).add(node.name in fp32_nodes)
    shared = {name for name in inits if readers.get(name) == {True, False}}
    for name in shared:
        twin = model.graph.initializer.add()
        twin.CopyFrom(inits[name])
        twin.name = f"{name}__fp32"
    for node in (n for n in model.graph.node if n.name in fp32_nodes):
        node.input[:] = [f"{i}__fp32" if i in shared else i for i in node.input]
    return model


def node_precision(model: onnx.ModelProto) -> dict[str, str]:
    """node name -> 'fp16' if it touches an FP16 tensor, else 'fp32' for float nodes, else 'int'."""
    ix = index_graph(model)
    types = {n.name: {ix.elem_type.get(t) for t in (*n.output, *n.input) if t} for n in ix.nodes}
    return {name: "fp16" if TensorProto.FLOAT16 in t else "fp32" if FLOAT in t else "int" for name, t in types.items()}


def io_signature(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    graph = model.graph
    return [(kind, v.name, v.type.tensor_type.elem_type) for kind, vs in (("input", graph.input), ("output", graph.output)) for v in vs]


# ------------------------------------------------------------------------------------------------ report


def build_report(*, ix: GraphIndex, reasons: dict[str, list[str]], absmax: dict[str, float], precision: dict[str, str],
                 **facts) -> dict:
    """What stayed FP32 and why (with the calibrated max of each node's I/O), counts by reason and op type."""
    by_name = ix.by_name
    kept = [{"name": n, "op_type": by_name[n].op_type, "reasons": r, "calibrated_absmax": node_absmax(by_name[n], absmax)}
            for n, r in reasons.items()]
    float_nodes = [n for n in ix.nodes if ix.has_precision(n)]
    count = lambda nodes: dict(Counter(n.op_type for n in nodes).most_common())
    return {
        **{k: str(v) if isinstance(v, Path) else v for k, v in facts.items()},
        "nodes": len(ix.nodes), "float_nodes": len(float_nodes),
        "fp32_nodes": kept,
        "fp32_by_reason": {r: count(by_name[k["name"]] for k in kept if r in k["reasons"]) for r in REASONS},
        "fp32_by_converter": [n.name for n in float_nodes if precision.get(n.name) == "fp32" and n.name not in reasons],
        "not_fp32_as_asked": [n for n in reasons if precision.get(n) == "fp16"],
        # Headroom: the largest calibrated |x| left in FP16 (FP16 overflows at 65504; its step is 0.5 at 512).
        "fp16_peak": max(([node_absmax(n, absmax), n.name] for n in float_nodes if precision.get(n.name) == "fp16"), default=None),
        "fp16_by_op_type": count(n for n in float_nodes if precision.get(n.name) == "fp16"),
        "fp32_by_op_type": count(n for n in float_nodes if precision.get(n.name) == "fp32"),
    }


def markdown(r: dict) -> str:
    fp16, fp32 = r["fp16_by_op_type"], r["fp32_by_op_type"]
    lines = [
        f"# FP16 conversion of {Path(r['src']).name}", "",
        f"- output: `{r['out']}` (backend {r['backend']}{', plain: no FP32 islands' if r['plain'] else ''})",
        f"- calibration: {r['calibration']}, max side {r['calib_size']}, data_max {r['data_max']:g}; "
        f"largest |x| left in FP16: {r['fp16_peak'][0]:.4g} at {r['fp16_peak'][1]}" if r["fp16_peak"] else "",
        (f"- float nodes: {r['float_nodes']} of {r['nodes']}; FP16 {sum(fp16.values())}, FP32 {sum(fp32.values())} "
         f"({len(r['fp32_nodes'])} by the rules below, {len(r['fp32_by_converter'])} by the converter)"),
        "- check on one calibration image vs FP32: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in r["smoke"].items()),
        "", "| reason | nodes | by op type |", "|---|---|---|",
        *(f"| {k} | {sum(v.values())} | {', '.join(f'{op} {n}' for op, n in v.items())} |" for k, v in r["fp32_by_reason"].items()),
        "", "FP16 nodes by op type: " + ", ".join(f"{op} {n}" for op, n in fp16.items()),
        "", "FP32 nodes by op type: " + ", ".join(f"{op} {n}" for op, n in fp32.items()),
    ]
    if r["not_fp32_as_asked"]:
        lines += ["", f"**Warning**: {len(r['not_fp32_as_asked'])} nodes meant to stay FP32 run in FP16: {r['not_fp32_as_asked'][:10]}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, path: Path, log=print) -> None:
    """JSON at ``path``, the Markdown summary beside it (.md), and the summary printed."""
    path = Path(path).with_suffix(".json") if Path(path).suffix == ".md" else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    text = markdown(report)
    path.with_suffix(".md").write_text(text)
    log(text + f"\nreport: {path} (+ {path.with_suffix('.md').name})")


# ---------------------------------------------------------------------------------------------- driver


def convert_file(src, out, *, calib=None, keep_fp32=(), data_max=DEFAULT_DATA_MAX, backend="auto", plain=False,
                 calib_count=6, calib_size=256, threads=2, overwrite=False, report=None, log=print) -> dict:
    """Convert ``src`` to ``out`` (atomically) and write the report; returns the report dict.

    Raises PrecisionError for bad inputs or options, and when the result does not run in ONNX Runtime.
    """
    src, out = Path(src), Path(out).absolute()
    check_paths(src, out, calib, overwrite)
    backend = pick_backend(backend)
    model = load_codeenhance_graph(src)
    ix = index_graph(model)
    user = user_nodes(ix, list(keep_fp32))  # before minutes of calibration: a typo fails now
    # plain: no rules to calibrate; one image still gives the check its FP32 reference.
    try:
        images, source, skipped = fidelity.calibration_images(calib, 1 if plain else calib_count, calib_size)
    except ValueError as e:
        raise PrecisionError(f"--calib: {e}") from e
    for reason in skipped:
        log(f"skipped calibration image {reason}")
    log(f"calibrating on {source} (max side {calib_size}) ...")
    absmax, reference = fidelity.activation_ranges(model, ix.activations, images, threads)
    reasons = {} if plain else classify(ix, absmax, data_max, user)
    log(f"converting with {backend}: {len(reasons)} nodes stay FP32 ...")
    converted = convert(src, model, set(reasons), backend, plain)
    if io_signature(converted) != io_signature(model):
        raise PrecisionError(f"the converter changed the graph I/O: {io_signature(converted)} vs {io_signature(model)}")
    record = onnx_record(model).with_(source_sha256=file_sha256(src), precision=FP16 if plain else reported_precision(FP16))
    onnx.helper.set_model_props(converted, {**{p.key: p.value for p in model.metadata_props}, **record.to_strings()})
    with AtomicOutput(out) as tmp:  # renamed over ``out`` only when the converted graph passes the check
        seal_onnx(converted)
        onnx.save(converted, str(tmp))
        check = run_check(tmp, images[0], reference, threads, plain)
    result = build_report(
        src=src, out=out, backend=backend, plain=plain, data_max=data_max, calibration=source, calib_size=calib_size,
        keep_fp32=list(keep_fp32), ix=ix, reasons=reasons, absmax=absmax, precision=node_precision(converted), smoke=check,
    )
    write_report(result, Path(report or out.with_suffix(".precision.json")), log)
    return result


def run_check(path: str, image: np.ndarray, reference: list[np.ndarray], threads: int, plain: bool) -> dict:
    """Compare with FP32 on one calibration image. A graph ONNX Runtime cannot run is an error, except with
    --plain, whose output exists only for comparison: there the failure is the finding, kept in the report."""
    try:
        return fidelity.compare_on_image(path, image, reference, threads)
    except Exception as e:
        message = f"ONNX Runtime cannot run the converted graph: {str(e).splitlines()[0][:400]}"
        if not plain:
            raise PrecisionError(message) from e
        return {"error": message}


def load_codeenhance_graph(src: Path) -> onnx.ModelProto:
    """The FP32 graph to convert; PrecisionError for a file that is no ONNX graph or not one of ours."""
    try:
        model = load_onnx_file(src)
    except InputError as e:
        raise PrecisionError(str(e)) from e
    check_io([i.name for i in model.graph.input], [o.name for o in model.graph.output], where=str(src),
             verdict="is not a CodeEnhance graph", error=PrecisionError, fix="export one with python -m export.onnx")
    precision = onnx_record(model).precision or FP32
    if precision != FP32:
        raise PrecisionError(f"{src} is already {precision}; convert the FP32 graph from python -m export.onnx")
    return model


def check_paths(src: Path, out: Path, calib, overwrite: bool) -> None:
    problem = (
        f"input model not found: {src}" if not src.exists() else f"{src} is not a file" if not src.is_file()
        else f"--out {out} is a directory; name a file" if out.is_dir()
        else f"{out} exists; pass --overwrite to replace it" if out.exists() and not overwrite
        else "--out must differ from the input model" if out.resolve() == src.resolve() else None
    )
    if problem:
        raise PrecisionError(problem)
    if calib is not None:
        try:
            fidelity.list_images(calib)
        except (OSError, ValueError) as e:
            raise PrecisionError(f"--calib: {e}") from e
    out.parent.mkdir(parents=True, exist_ok=True)


def parse_args(argv):
    p = common.parser("python -m export.precision", __doc__)
    add = p.add_argument
    add("model", type=Path, help="FP32 ONNX graph from python -m export.onnx")
    common.add_output(p, help="the FP16 .onnx to write", overwrite_help="replace an existing --out file")
    common.add_calibration(p, count_default=6)
    add("--keep-fp32", action="append", default=[], metavar="OPS/NODES",
        help="op types or node names (shell patterns allowed) to keep in FP32; comma-separated, repeatable")
    add("--data-max", type=common.positive_float, default=DEFAULT_DATA_MAX, help=f"FP32 above this calibrated |x| (default {DEFAULT_DATA_MAX:g})")
    add("--backend", choices=BACKENDS, default="auto", help="auto: ModelOpt AutoCast if installed, else onnxconverter-common")
    add("--plain", action="store_true", help="no FP32 islands: the converter's own all-FP16 result, for comparison")
    common.add_threads(p, default=2, help="ONNX Runtime threads (default 2)")
    add("--report", type=Path, help="report JSON (a .md summary goes beside it); default OUT.precision.json")
    args = p.parse_args(argv)
    args.keep_fp32 = [t.strip() for item in args.keep_fp32 for t in item.split(",") if t.strip()]
    return args


@common.run_main
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        convert_file(a.model, a.out, calib=a.calib, keep_fp32=a.keep_fp32, data_max=a.data_max, backend=a.backend,
                     plain=a.plain, calib_count=a.calib_count, calib_size=a.calib_size, threads=a.threads,
                     overwrite=a.overwrite, report=a.report)
    except PrecisionError as e:
        raise e.also("nothing was written")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
