"""python -m export.onnx --ckpt CKPT --out model.onnx: CodeEnhance as one exact, small, dynamic ONNX graph.

Graph contract: inputs image float32 [N,3,H,W] (RGB in [0,1], any H, W >= 1), w_texture and w_style
float32 [N]; output enhanced float32 [N,3,H,W] clamped to [0,1], plus codes int32 [N,1,Hp/4,Wp/4] with
--with-codes. The original's flip padding to the next multiple of the pad multiple (contract.graph) and the final
crop are inside the graph.

The graph is traced with the torch.export-based exporter, cleaned with onnxslim, checked for TensorRT's ONNX
parser (export/check.py) and verified in ONNX Runtime against PyTorch before it is moved into place.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

import codeenhance
from codeenhance import CodeEnhance
from contract import cli as common
from contract.errors import EXIT_OK, InputError, NotFaithfulError
from contract.files import AtomicOutput, file_sha256
from contract.integrity import seal_onnx
from contract.graph import FP32, INPUT_IMAGE, INPUT_W_STYLE, INPUT_W_TEXTURE, OUTPUT_CODES, PAD_MULTIPLE
from contract.provenance import Kind, Provenance, code_fingerprint

from . import check as trt_check
from .graph import DEFAULT_OPSET, LOOKUPS, MAX_OPSET, MIN_OPSET, slim, trace
from .verify import DEFAULT_ATOL, format_report, verify_onnx

_M = PAD_MULTIPLE
PADDING_RULE = (
    f"inside the graph: pad bottom/right to Hp=(H//{_M}+1)*{_M}, Wp=(W//{_M}+1)*{_M} with the mirrored image "
    f"(rows of cat[x, flip(x)] then columns, as the original test(); always 1..{_M} added; the mirroring repeats "
    "for H or W < 16), run, crop to [:H, :W]"
)
INPUT_RANGE = (f"{INPUT_IMAGE}: float32 RGB in [0,1], [N,3,H,W], H,W >= 1; {INPUT_W_TEXTURE}, {INPUT_W_STYLE}: "
               "float32 [N] (1.0 = default)")
IN_MEMORY = "none: exported from an in-memory model"

Validator = Callable[[onnx.ModelProto, CodeEnhance], None]  # the in-memory graph, before it is written


class ExportError(InputError):
    """An export that cannot be done (options, output path), with the reason."""


class GraphRejected(NotFaithfulError, ExportError):
    """The exported graph failed the TensorRT check or the ONNX Runtime verification (exit 1)."""


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is out of range: use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET}). torch's exporter "
            f"cannot produce opsets below {MIN_OPSET} for this model; above {MAX_OPSET} is untested with TensorRT's "
            "parser; 21 emits per-channel GroupNormalization, which needs TensorRT >= 10.9"
        )
    return opset


def load_source(ckpt_or_model: str | os.PathLike | CodeEnhance) -> tuple[CodeEnhance, str]:
    """(model in eval mode, sha256 of its checkpoint file or IN_MEMORY); CheckpointError for a bad file."""
    if isinstance(ckpt_or_model, CodeEnhance):
        return ckpt_or_model.eval(), IN_MEMORY
    path = Path(ckpt_or_model)
    model = codeenhance.load_model(path)
    return model, file_sha256(path)


def reserve_output(out: str | os.PathLike, overwrite: bool) -> AtomicOutput:
    """The temp file next to ``out`` that replaces it on success, created up front: an unwritable folder fails
    before minutes of tracing, and an existing file is refused unless ``overwrite``."""
    out = Path(out).absolute()
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file name such as {out / 'codeenhance.onnx'}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    try:
        return AtomicOutput(out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e} ({type(e).__name__})") from e


def save_and_validate(graph: onnx.ModelProto, tmp: Path, validate: Validator | None, model: CodeEnhance | None) -> None:
    """Let ``validate`` reject the graph, then write the reserved temp file (renamed into place by the caller)."""
    if validate is not None:
        validate(graph, model)
    seal_onnx(graph)  # last: the payload hash covers exactly what is written
    onnx.save(graph, str(tmp))


@functools.cache
def exporter_fingerprint() -> str:
    """Short hash of all that shapes the exported graph: the model and export packages' code and the versions of
    torch, onnxscript, onnx_ir (the exporter's IR and optimizer), onnxslim and onnx. Recorded in the metadata; a
    tool that reuses an earlier export checks it, because an upgraded toolkit exports a different graph from the
    same checkpoint."""
    import onnx_ir
    import onnxscript
    import onnxslim

    sources = [path for root in (Path(codeenhance.__file__).parent, Path(__file__).parent) for path in sorted(root.glob("*.py"))]
    return code_fingerprint(sources, *(f"{m.__name__} {m.__version__}" for m in (torch, onnxscript, onnx_ir, onnxslim, onnx)))


def metadata(model: CodeEnhance, *, checkpoint_sha256: str, opset: int, lookup: str, with_codes: bool) -> dict[str, str]:
    """The graph's provenance record (contract.provenance) and, beside it, what a person reading the file needs."""
    import onnxslim

    record = Provenance(kind=Kind.ONNX, checkpoint_sha256=checkpoint_sha256, source_sha256=checkpoint_sha256,
                        exporter_fingerprint=exporter_fingerprint(), model_config=model.config.to_dict(), precision=FP32)
    return {
        **record.to_strings(),
        "padding": PADDING_RULE,
        "input_range": INPUT_RANGE,
        "output": "enhanced: float32 [N,3,H,W] clamped to [0,1]" + ("; codes: int32 [N,1,Hp/4,Wp/4]" if with_codes else ""),
        "opset": str(opset),
        "lookup": lookup,
        "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True); onnxslim {onnxslim.__version__}",
    }


def build_onnx(
    model: CodeEnhance, *, opset: int = DEFAULT_OPSET, with_codes: bool = False, lookup: str = "gather",
    checkpoint_sha256: str = IN_MEMORY,
) -> onnx.ModelProto:
    """Trace, slim (dim names cleared too) and attach the metadata; nothing is written."""
    check_opset(opset)
    graph = slim(trace(model, opset=opset, lookup=lookup, with_codes=with_codes))
    if trt_check.onnx_opset(graph) != opset:  # the exporter falls back to its own opset when conversion fails
        raise ExportError(f"the exporter produced opset {trt_check.onnx_opset(graph)} instead of the requested {opset}")
    props = metadata(model, checkpoint_sha256=checkpoint_sha256, opset=opset, lookup=lookup, with_codes=with_codes)
    onnx.helper.set_model_props(graph, props)
    return graph


def export_onnx(
    ckpt_or_model: str | os.PathLike | CodeEnhance,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    with_codes: bool = False,
    lookup: str = "gather",
    overwrite: bool = False,
    validate: Validator | None = None,
) -> Path:
    """Export to ``out_path`` atomically; ``validate(temp_path, model)`` may raise to reject the graph.

    Raises ExportError (bad options, unwritable or existing output, rejected graph) or CheckpointError.
    On any failure nothing is left at ``out_path`` (an existing file there stays as it was).
    """
    check_opset(opset)
    if lookup not in LOOKUPS:
        raise ExportError(f"lookup must be one of {', '.join(LOOKUPS)}, got {lookup!r}")
    output = reserve_output(out_path, overwrite)
    with output as tmp:
        model, sha = load_source(ckpt_or_model)
        graph = build_onnx(model, opset=opset, with_codes=with_codes, lookup=lookup, checkpoint_sha256=sha)
        save_and_validate(graph, tmp, validate, model)
    return output.path


def save_onnx(
    graph: onnx.ModelProto, out_path: str | os.PathLike, *, overwrite: bool = False,
    validate: Validator | None = None, model: CodeEnhance | None = None,
) -> Path:
    """Write an already built graph with the same guarantees as ``export_onnx`` (e.g. after editing it)."""
    output = reserve_output(out_path, overwrite)
    with output as tmp:
        save_and_validate(graph, tmp, validate, model)
    return output.path


def cli_validator(*, verify: bool, atol: float, threads: int, lookup: str) -> Validator:
    """The CLI's gate: the TensorRT check always, the ONNX Runtime comparison unless --no-verify."""
    allowed = {"ScatterElements", "ScatterND"} if lookup == "onehot" else set()  # the baseline is a scatter graph

    def validate(graph: onnx.ModelProto, model: CodeEnhance) -> None:
        report = trt_check.check_model(graph, "exported graph", forbidden=trt_check.FORBIDDEN_OPS - allowed)
        print(report.summary())
        if not report.ok:
            raise GraphRejected(f"the graph failed the TensorRT compatibility check ({len(report.problems)} problem(s))")
        if verify:
            result = verify_onnx(graph, model, atol=atol, threads=threads)
            print(format_report(result))
            if not result["passed"]:
                raise GraphRejected(
                    f"ONNX Runtime output differs from PyTorch beyond atol {atol:g} (max abs {result['max_abs']:.3g}; "
                    f"{result['max_abs_same_codes']:.3g} with the same codes)"
                )

    return validate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser("python -m export.onnx", __doc__)
    common.add_checkpoint(p)
    common.add_output(p, help="the .onnx file to write", overwrite_help="replace an existing output file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--with-codes", action="store_true", help=f"add the int32 {OUTPUT_CODES!r} output [N,1,Hp/4,Wp/4]")
    p.add_argument("--lookup", choices=LOOKUPS, default="gather",
                   help="nearest-code lookup: gather (default) or onehot (the original's scatter/one-hot, a benchmark baseline)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    p.add_argument("--atol", type=common.finite_float(0), default=DEFAULT_ATOL, help=f"max abs error allowed in verification (default {DEFAULT_ATOL:g})")
    common.add_threads(p, default=2, help="ONNX Runtime intra-op threads for verification (default 2)")
    return p.parse_args(argv)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    validate = cli_validator(verify=not args.no_verify, atol=args.atol, threads=args.threads, lookup=args.lookup)
    try:
        out = export_onnx(
            args.ckpt, args.out, opset=args.opset, with_codes=args.with_codes, lookup=args.lookup,
            overwrite=args.overwrite, validate=validate,
        )
    except ExportError as e:
        raise e.also(f"nothing was written to {args.out}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, opset {args.opset}, lookup {args.lookup})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
