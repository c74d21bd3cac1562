"""OpenVINO int8 (NNCF post-training quantization) against ONNX Runtime fp32: what int8 reaches.

    pip install "codeenhance-deploy[int8]"
    python benchmarks/openvino_int8.py --onnx official_codes.onnx [--calib-count 8] [--images ../shared/data/lowlight]
        [--max-side 256] [--size 256x256] [--repeats 3] [--out-ir int8.xml]

The graph (exported ``--with-codes``) is read by OpenVINO and quantized by ``nncf.quantize`` (transformer preset:
Swin context) on the first --calib-count photos, with the FP32 islands (nearest-code search, normalisation
statistics: ``runtime.openvino_ir``'s rule) in NNCF's ignored scope and marked fp32 in the saved IR; the rest of the
float ops run bf16. Then every photo is compared with ONNX Runtime fp32 (PSNR, code agreement, NaN) and both run at
--size alternately, best of --repeats. The toolkit does not ship int8: it is measured here, against the bar the
reduced precision must meet (export.fidelity.REDUCED_PRECISION_BAR: the image against fp32, code agreement reported).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contract.graph import INPUT_IMAGE, INPUT_NAMES, OUTPUT_CODES, OUTPUT_ENHANCED, WEIGHT_NAMES
from contract.sizes import parse_size
from export import fidelity
from contract import cli as common

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "lowlight"


#: Accuracy control's metric: the image PSNR against ONNX Runtime fp32, capped here (identical images are "inf").
PSNR_CAP = 60.0


def validate_psnr(compiled, data) -> tuple[float, list[float]]:
    """NNCF's validation function over (input, fp32 reference) items: the mean capped PSNR of the model's image
    against the reference (higher is better), and the per-photo values NNCF ranks quantizers by."""
    ones = np.ones(1, np.float32)
    values = []
    for x, reference in data:
        out = compiled(dict(zip(INPUT_NAMES, (x, ones, ones))))[compiled.output(OUTPUT_ENHANCED)]
        values.append(min(PSNR_CAP, fidelity.psnr(np.clip(out, 0, 1), reference)))
    return float(np.mean(values)), values


def quantize(onnx_path: Path, photos: list[np.ndarray], out: Path, *, min_psnr: float | None = None,
             references: list[np.ndarray] | None = None, max_iterations: int = 8) -> float:
    """Write the int8 IR to ``out``; returns the seconds NNCF took. With ``min_psnr`` (and the fp32 ``references``
    of ``photos``), NNCF's accuracy control reverts the quantizers that cost the most PSNR until the mean capped
    PSNR against fp32 is at least ``min_psnr`` (or ``max_iterations`` reverts were tried)."""
    import nncf
    import openvino as ov

    from runtime.openvino_ir import island_nodes, mark_islands, ov_ops_for, skeleton

    model = ov.Core().read_model(str(onnx_path))
    graph = skeleton(onnx_path)
    keep = island_nodes(graph)
    islands = sorted({op.get_friendly_name() for ops in ov_ops_for(model, graph, keep).values() for op in ops})
    ones = np.ones(1, np.float32)
    # Items are (input, fp32 reference or None): the reference travels with its photo into any subset NNCF takes.
    items = list(zip([fidelity.to_nchw(p) for p in photos], references or [None] * len(photos)))
    dataset = nncf.Dataset(items, lambda item: dict(zip(INPUT_NAMES, (item[0], ones, ones))))
    scope = nncf.IgnoredScope(names=islands, types=["MVN", "TopK"], validate=False)
    t0 = time.perf_counter()
    if min_psnr is None:
        quantized = nncf.quantize(model, dataset, subset_size=len(photos), model_type=nncf.ModelType.TRANSFORMER,
                                  ignored_scope=scope)
    else:
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        # The fp32 model scores PSNR_CAP against its own references; the drop allowed leaves min_psnr.
        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, dataset, validate_psnr, max_drop=PSNR_CAP - min_psnr,
            drop_type=nncf.DropType.ABSOLUTE, subset_size=len(photos), model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=scope,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=max_iterations))
    seconds = time.perf_counter() - t0
    mark_islands(quantized, graph, keep)  # honoured once serialized (OpenVINO 2026.3+)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return seconds


class Int8Model:
    """The int8 IR compiled for each input shape (static shapes, bf16 for the float ops)."""

    def __init__(self, xml: Path, threads: int):
        import openvino as ov

        self.core, self.xml, self.shape, self.request = ov.Core(), xml, None, None
        self.config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        if x.shape != self.shape:
            model = self.core.read_model(str(self.xml))
            model.reshape({INPUT_IMAGE: list(x.shape), **{name: [x.shape[0]] for name in WEIGHT_NAMES}})
            self.compiled = self.core.compile_model(model, "CPU", self.config)
            self.request, self.shape = self.compiled.create_infer_request(), x.shape
        ones = np.ones(x.shape[0], np.float32)
        self.request.infer(dict(zip(INPUT_NAMES, (x, ones, ones))))
        return [self.request.get_tensor(OUTPUT_ENHANCED).data.clip(0, 1), self.request.get_tensor(OUTPUT_CODES).data.copy()]

    def precisions(self) -> dict:
        from collections import Counter

        rows = [op.get_rt_info() for op in self.compiled.get_runtime_model().get_ordered_ops()]
        return dict(Counter(r["runtimePrecision"].astype(str) for r in rows
                            if r["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul")))


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/openvino_int8.py", __doc__)
    p.add_argument("--onnx", type=Path, required=True, help="fp32 graph exported --with-codes")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    common.add_calibration(p, count_default=8, size_default=None, folder=False, what="int8 quantization: ")
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--size", default="256x256")
    p.add_argument("--repeats", type=int, default=3)
    common.add_threads(p, default=2)
    p.add_argument("--out-ir", type=Path, help="keep the int8 IR here (default: a temporary folder)")
    p.add_argument("--accuracy-control", type=common.finite_float(0, PSNR_CAP), metavar="DB",
                   help="NNCF accuracy control: revert quantizers until the calibration photos' mean PSNR against "
                        "fp32 is at least DB (e.g. 45, the reduced-precision bar)")
    p.add_argument("--max-reverts", type=common.positive_int, default=8,
                   help="accuracy control: at most this many revert iterations (default 8)")
    args = p.parse_args(argv)
    try:
        import nncf  # noqa: F401
    except ImportError as e:
        print(f"NNCF is not installed ({e}): pip install 'codeenhance-deploy[int8]'", file=sys.stderr)
        return 2
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    paths = fidelity.list_images(args.images)
    photos = [fidelity.load_rgb(path, args.max_side) for path in paths]
    with tempfile.TemporaryDirectory() as tmp:
        xml = args.out_ir or Path(tmp) / "int8.xml"
        calib = photos[:args.calib_count]
        references = None
        if args.accuracy_control is not None:
            with OnnxRuntimeBackend(args.onnx, threads=args.threads) as ort:
                ones = np.ones(1, np.float32)
                references = [ort.infer(fidelity.to_nchw(p), ones, ones).enhanced for p in calib]
        seconds = quantize(args.onnx, calib, xml, min_psnr=args.accuracy_control, references=references,
                           max_iterations=args.max_reverts)
        how = "" if args.accuracy_control is None else f" with accuracy control (mean PSNR >= {args.accuracy_control:g} dB)"
        print(f"quantized{how} in {seconds:.0f} s on {args.calib_count} photos from {args.images}", flush=True)
        int8, ones = Int8Model(xml, args.threads), np.ones(1, np.float32)
        with OnnxRuntimeBackend(args.onnx, threads=args.threads) as ort:
            rows = []
            for image in photos:
                x = fidelity.to_nchw(image)
                ref = ort.infer(x, ones, ones)
                rows.append(fidelity.compare_outputs(int8.infer(x), [ref.enhanced, ref.codes]))
            x = fidelity.synthetic_lowlight(1, parse_size(args.size))[0]
            x = fidelity.to_nchw(x)
            times = {"ort-fp32": [], "ov-int8": []}
            int8.infer(x), ort.infer(x, ones, ones)  # warm-up (the int8 compile for this shape)
            for _ in range(args.repeats):
                for name, run in (("ort-fp32", lambda: ort.infer(x, ones, ones)), ("ov-int8", lambda: int8.infer(x))):
                    t0 = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t0)
        precisions = int8.precisions()
    f = fidelity.summarize(rows)
    best = {k: min(v) for k, v in times.items()}
    print(f"\n| {f['images']} photos, longest side {args.max_side}, vs ONNX Runtime fp32 | PSNR mean / worst | "
          "code agreement mean / worst | NaN |\n|---|---|---|---|")
    print(f"| OpenVINO int8 | {f['psnr_mean']:.2f} / {f['psnr_worst']:.2f} dB | {100 * f['code_agreement_mean']:.2f}% / "
          f"{100 * f['code_agreement_worst']:.2f}% | {f['nonfinite']} |")
    print(f"\n{args.size}, best of {args.repeats} alternating: ONNX Runtime fp32 {best['ort-fp32']:.2f} s, OpenVINO int8 "
          f"{best['ov-int8']:.2f} s ({best['ov-int8'] / best['ort-fp32']:.3f}x); Convolution/FullyConnected/MatMul "
          f"runtime precisions {precisions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
