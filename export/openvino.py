"""python -m export.openvino MODEL.onnx --out MODEL-bf16.xml [--precision bf16|fp32] [--keep-fp32 OPS] [--overwrite]

Writes the OpenVINO IR (.xml + .bin) that the openvino backend compiles, ahead of time: for bf16 the FP32 islands
are marked and the other weights stored bf16 (runtime.openvino_ir). Loading the IR is then all a start does: no
ONNX parsing or marking, and a lower peak memory than converting the .onnx on the fly (benchmarks/results/).

The IR is compiled once for a small probe shape and the count of compute nodes per runtime precision is printed
with the lookup's: the lookup (distance product, ArgMin/TopK, codebook Gather) must run f32 under bf16, else nothing
is written.

bf16 keeps 8 mantissa bits; how much of the image survives that depends on the weights. So a bf16 IR is checked
against ONNX Runtime fp32 on calibration images (--calib: real photos; default synthetic low-light images) and
written only when the image meets the project's bar (export.fidelity.REDUCED_PRECISION_BAR: mean PSNR >= 45 dB,
worst >= 40 dB, no NaN). Code agreement is printed beside it and gated only with --min-code-agreement. Below the
bar the command says what it measured and exits 1 with nothing written.

    python -m runtime img.png -o out/ --model MODEL-bf16.xml        # runs bf16: the IR records its precision
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from contract import cli as common
from contract.errors import EXIT_OK, InputError, NotFaithfulError, ToolkitError

from . import fidelity
from .precision import PrecisionError, check_paths, load_codeenhance_graph

BAR = fidelity.REDUCED_PRECISION_BAR


# An IR that cannot be written (options, paths, the source graph), with the reason: a bad input. A bf16 IR below
# the fidelity bar is a NotFaithfulError: nothing is written (exit 1, like a rejected graph).
OpenVINOExportError = InputError


def bf16_fidelity(src: Path, ir: Path, images, threads: int | None) -> dict:
    """bf16 IR against ONNX Runtime fp32 on ``images``: PSNR mean/worst, code agreement mean/worst, NaN/Inf count."""
    from runtime.onnxruntime_backend import OnnxRuntimeBackend
    from runtime.openvino_backend import OpenVINOBackend

    ones = np.ones(1, np.float32)
    rows = []
    with OnnxRuntimeBackend(src, threads=threads) as ref, OpenVINOBackend(ir, threads=threads) as bf16:
        for image in images:
            x = fidelity.to_nchw(image)
            a, b = bf16.infer(x, ones, ones), ref.infer(x, ones, ones)
            rows.append(fidelity.compare_image(a.enhanced, b.enhanced, a.codes, b.codes))
    return fidelity.summarize(rows)


def fidelity_line(f: dict) -> str:
    codes = ("no codes output (export with --with-codes to measure code agreement)" if f["code_agreement_mean"] is None
             else f"code agreement {100 * f['code_agreement_mean']:.2f}% mean, {100 * f['code_agreement_worst']:.2f}% worst")
    return (f"PSNR {f['psnr_mean']:.1f} dB mean, {f['psnr_worst']:.1f} worst, largest 8-bit error {f['max_8bit_error']}; "
            f"{codes}; {f['nonfinite']} NaN/Inf")


def export_ir(src: Path, out: Path, precision: str = "bf16", keep_fp32=(), overwrite: bool = False,
              threads: int | None = None, calib: Path | None = None, calib_count: int = 4, calib_size: int = 256,
              bar: fidelity.FidelityBar = BAR, check: bool = True) -> dict:
    """Write the IR for ``src`` to ``out`` (.xml, with its .bin); returns what was written and measured.
    bf16 is checked against ONNX Runtime fp32 on calibration images first: NotFaithfulError below ``bar``
    (a bar of zeros accepts anything finite). ``check=False`` skips that check (for callers that measure fidelity
    themselves)."""
    if precision == "fp32" and keep_fp32:
        raise OpenVINOExportError("--keep-fp32 applies to bf16 only: an fp32 IR runs everything in fp32")
    from runtime.openvino_backend import OpenVINOBackend, import_openvino
    from runtime.openvino_ir import write_ir

    if out.suffix.lower() != ".xml":
        raise OpenVINOExportError(f"--out {out}: an OpenVINO IR is named .xml (its weights go beside it in .bin)")
    try:
        check_paths(src, out, None, overwrite)
        if out.with_suffix(".bin").exists() and not overwrite:
            raise PrecisionError(f"{out.with_suffix('.bin')} exists; pass --overwrite to replace it")
        load_codeenhance_graph(src)  # a CodeEnhance FP32 graph, else a clear error
        check = check and precision == "bf16"
        images, source, skipped = fidelity.calibration_images(calib, calib_count, calib_size) if check else ([], "", [])
        for reason in skipped:  # said, not silently dropped: the gate then runs on fewer photos than asked
            print(f"skipped calibration image {reason}", file=sys.stderr)
    except (PrecisionError, ValueError, OSError) as e:
        raise OpenVINOExportError(str(e)) from e
    ov = import_openvino()
    with tempfile.TemporaryDirectory(prefix="codeenhance-ov-export-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        facts = write_ir(ov.Core(), src, staged, precision, keep_fp32)
        with OpenVINOBackend(staged, precision=precision, threads=threads) as backend:
            info = backend.describe()
        lookup = info.extra["runtime_precision"]["lookup"]
        if precision == "bf16" and not (lookup and all(n["precision"] == "f32" for n in lookup.values())):
            raise OpenVINOExportError(f"the nearest-code lookup does not run f32 in the compiled IR ({lookup}); "
                                      f"OpenVINO {ov.get_version()} may not honour the marks")
        measured = None
        if check:
            measured = {**bf16_fidelity(src, staged, images, threads), "source": source}
            failures = bar.failures(measured)
            if failures:
                raise NotFaithfulError(
                    f"bf16 is not faithful enough on these weights: against ONNX Runtime fp32 on {source}, "
                    f"{fidelity_line(measured)}: {'; '.join(failures)} (bar: {bar.describe()}). "
                    "Use the fp32 IR (--precision fp32), keep more in fp32 (--keep-fp32 OPS), or accept it with "
                    "--min-psnr 0 --min-worst-psnr 0")
        shutil.move(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        shutil.move(staged, out)
    return {"ir": str(out), "bin_mib": out.with_suffix(".bin").stat().st_size / 2**20, "precision": info.precision,
            "islands": facts, "runtime_precision": info.extra["runtime_precision"], "openvino": ov.get_version(),
            "fidelity": measured}


def parse_args(argv):
    p = common.parser("python -m export.openvino", __doc__)
    p.add_argument("model", type=Path, help="FP32 ONNX graph from python -m export.onnx")
    common.add_output(p, help="the IR .xml to write (its .bin goes beside it)", overwrite_help="replace an existing IR")
    common.add_precision(p, choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="OPS/NODES",
                   help="more op types or node names (shell patterns) to keep fp32 under bf16; comma-separated, repeatable")
    common.add_calibration(p, count_default=4, what="bf16 fidelity check: ")
    p.add_argument("--min-psnr", type=common.finite_float(), default=BAR.psnr_mean, help=f"bf16 bar: mean PSNR vs fp32 (default {BAR.psnr_mean:g} dB)")
    p.add_argument("--min-worst-psnr", type=common.finite_float(), default=BAR.psnr_worst,
                   help=f"bf16 bar: PSNR of the worst image vs fp32 (default {BAR.psnr_worst:g} dB)")
    p.add_argument("--min-code-agreement", type=common.finite_float(0, 1), default=BAR.code_agreement,
                   help="bf16 bar: mean code agreement vs fp32, 0..1 (default 0: reported, not gated; needs a graph with codes)")
    common.add_threads(p, help="threads for the checks")
    args = p.parse_args(argv)
    args.keep_fp32 = [t.strip() for item in args.keep_fp32 for t in item.split(",") if t.strip()]
    args.bar = fidelity.FidelityBar(args.min_psnr, args.min_worst_psnr, args.min_code_agreement)
    return args


@common.run_main
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        result = export_ir(a.model, a.out, a.precision, a.keep_fp32, a.overwrite, a.threads, a.calib, a.calib_count,
                           a.calib_size, a.bar)
    except ToolkitError as e:
        raise e.also("nothing was written")
    except ValueError as e:
        raise InputError(f"{e}; nothing was written") from e
    nodes = result["runtime_precision"]["compute_nodes"]
    print(f"wrote {result['ir']} (+ .bin, {result['bin_mib']:.1f} MiB), {result['precision']}, OpenVINO {result['openvino']}")
    if a.precision == "bf16":
        islands = result["islands"]
        print(f"  fp32 islands: {islands['onnx_nodes']} ONNX nodes ({islands['reasons']}), {islands['bf16_weights']} weights stored bf16")
        print(f"  against ONNX Runtime fp32 on {result['fidelity']['source']}: {fidelity_line(result['fidelity'])}")
    print(f"  compiled compute nodes by precision: {nodes}; lookup: "
          + ", ".join(f"{v['layer_type']} {v['precision']}" for v in result["runtime_precision"]["lookup"].values()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
