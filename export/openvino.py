"""python -m export.openvino MODEL.onnx --out MODEL-bf16.xml [--precision bf16|fp32] [--keep-fp32 OPS] [--overwrite]

Writes the OpenVINO IR (.xml + .bin) that the openvino backend compiles, ahead of time: for bf16 the FP32 islands
are marked and the other weights stored bf16 (runtime.openvino_ir). Loading the IR is then all a start does:
no ONNX parsing or marking, and a lower peak memory than converting the .onnx on the fly (measured, official size,
one 256x256 image: 425 MiB from the IR, 690 MiB converting first; ONNX Runtime 480 MiB).

The IR is compiled once for a small probe shape and the runtime precision of every node is printed: the lookup
(distance product, ArgMin/TopK, codebook Gather) must run f32 under bf16, else nothing is written.

    python -m runtime img.png -o out/ --model MODEL-bf16.xml        # runs bf16: the IR records its precision
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from contract.errors import EXIT_OK, ToolkitError

from .precision import PrecisionError, check_paths, load_codeenhance_graph


class OpenVINOExportError(ToolkitError):
    """An IR that cannot be written, with the reason."""


def export_ir(src: Path, out: Path, precision: str = "bf16", keep_fp32=(), overwrite: bool = False,
              threads: int | None = None) -> dict:
    """Write the IR for ``src`` to ``out`` (.xml, with its .bin); returns the backend's description of it."""
    from runtime.openvino_backend import OpenVINOBackend, import_openvino
    from runtime.openvino_ir import write_ir

    if out.suffix.lower() != ".xml":
        raise OpenVINOExportError(f"--out {out}: an OpenVINO IR is named .xml (its weights go beside it in .bin)")
    try:
        check_paths(src, out, None, overwrite)
        if out.with_suffix(".bin").exists() and not overwrite:
            raise PrecisionError(f"{out.with_suffix('.bin')} exists; pass --overwrite to replace it")
        load_codeenhance_graph(src)  # a CodeEnhance FP32 graph, else a clear error
    except PrecisionError as e:
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
        shutil.move(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        shutil.move(staged, out)
    return {"ir": str(out), "bin_mib": out.with_suffix(".bin").stat().st_size / 2**20, "precision": info.precision,
            "islands": facts, "runtime_precision": info.extra["runtime_precision"], "openvino": ov.get_version()}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m export.openvino", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="FP32 ONNX graph from python -m export.onnx")
    p.add_argument("--out", type=Path, required=True, help="the IR .xml to write (its .bin goes beside it)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="OPS/NODES",
                   help="more op types or node names (shell patterns) to keep fp32 under bf16; comma-separated, repeatable")
    p.add_argument("--threads", type=int, help="threads for the probe compile")
    p.add_argument("--overwrite", action="store_true", help="replace an existing IR")
    args = p.parse_args(argv)
    args.keep_fp32 = [t.strip() for item in args.keep_fp32 for t in item.split(",") if t.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        result = export_ir(a.model, a.out, a.precision, a.keep_fp32, a.overwrite, a.threads)
    except (ToolkitError, ValueError) as e:
        print(f"error: {e}; nothing was written", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    nodes = result["runtime_precision"]["compute_nodes"]
    print(f"wrote {result['ir']} (+ .bin, {result['bin_mib']:.1f} MiB), {result['precision']}, OpenVINO {result['openvino']}")
    if a.precision == "bf16":
        islands = result["islands"]
        print(f"  fp32 islands: {islands['onnx_nodes']} ONNX nodes ({islands['reasons']}), {islands['bf16_weights']} weights stored bf16")
    print(f"  compiled compute nodes by precision: {nodes}; lookup: "
          + ", ".join(f"{v['layer_type']} {v['precision']}" for v in result["runtime_precision"]["lookup"].values()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
