"""Fidelity of FP16 graphs against their FP32 original, in ONNX Runtime on the CPU, on real low-light photos.

    python benchmarks/fp16_fidelity.py --fp32 model.onnx --fp16 mixed=model_fp16.onnx [--fp16 plain=model_plain.onnx]
        [--images ../shared/data/lowlight] [--max-side 256] [--limit N] [--json results.json]

Per graph: PSNR (dB, mean and worst image), SSIM (Wang et al.), the largest 8-bit error, code agreement (when the
graphs have the 'codes' output: export with --with-codes) and NaN/Inf count. A graph that fails to load or run is
reported as such. Photos are downscaled to --max-side (area filter) because the full model costs ~6.4 MFLOP per
padded pixel and ONNX Runtime's CPU FP16 is no faster than FP32. Without --images and ../shared, synthetic
low-light images are used. The pass column applies the project's bar (export.fidelity.REDUCED_PRECISION_BAR:
mean PSNR >= 45 dB, worst >= 40 dB, no NaN/Inf; code agreement is reported beside it).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from export import fidelity
from contract import cli as common

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "lowlight"


def labelled(text: str) -> tuple[str, Path]:
    """'label=path' or 'path' (labelled by its file name)."""
    label, sep, path = text.partition("=")
    return (label, Path(path)) if sep else (Path(text).stem, Path(text))


def load_inputs(folder: Path | None, max_side: int, limit: int | None) -> tuple[list[tuple[str, object]], str]:
    if folder is None and not DEFAULT_IMAGES.exists():
        images = fidelity.synthetic_lowlight(limit or 8, (max_side * 3 // 4, max_side))
        return [(f"synthetic_{i}", im) for i, im in enumerate(images)], "synthetic low-light images"
    folder = folder or DEFAULT_IMAGES
    paths = fidelity.list_images(folder)[:limit]
    return [(str(p.relative_to(folder)), fidelity.load_rgb(p, max_side)) for p in paths], str(folder)


def timed_run(session, image):
    t0 = time.perf_counter()
    outputs = session.run(None, fidelity.graph_feed(image))
    return outputs, time.perf_counter() - t0


def evaluate(fp32: Path, variants: list[tuple[str, Path]], inputs, threads: int) -> dict:
    """Per-image metrics of every variant; a variant that cannot load or run keeps its error instead."""
    reference = fidelity.ort_session(fp32, threads)
    sessions, results = {}, {}
    for label, path in variants:
        try:
            sessions[label] = fidelity.ort_session(path, threads)
            results[label] = {"path": str(path), "rows": []}
        except Exception as e:  # noqa: BLE001 - the failure itself is the result
            results[label] = {"path": str(path), "error": f"does not load in ONNX Runtime: {str(e).splitlines()[0][:300]}"}
    for name, image in inputs:
        ref, ref_s = timed_run(reference, image)
        line = [f"{name} {image.shape[1]}x{image.shape[0]}: fp32 {ref_s:.1f}s"]
        for label, session in list(sessions.items()):
            try:
                out, secs = timed_run(session, image)
            except Exception as e:  # noqa: BLE001
                results[label]["error"] = f"fails to run: {str(e).splitlines()[0][:300]}"
                del sessions[label]
                continue
            row = {"image": name, "hw": list(image.shape[:2]), "seconds": secs, "fp32_seconds": ref_s,
                   **fidelity.compare_outputs(out, ref)}
            results[label]["rows"].append(row)
            line.append(f"{label} {secs:.1f}s {row['psnr']:.1f} dB" + (f" codes {row['code_agreement']:.4f}" if row["code_agreement"] is not None else ""))
        print(" | ".join(line), flush=True)
    return results


def summarize(result: dict) -> dict:
    rows = result.get("rows", [])
    if not rows:
        return {"error": result.get("error", "no images")}
    s = {**fidelity.summarize(rows), "seconds_mean": statistics.fmean(r["seconds"] for r in rows),
         "fp32_seconds_mean": statistics.fmean(r["fp32_seconds"] for r in rows)}
    s["passes_bar"] = not fidelity.REDUCED_PRECISION_BAR.failures(s)
    if "error" in result:
        s["error"] = result["error"]
    return s


def table(summaries: dict[str, dict]) -> str:
    head = ("| graph | images | PSNR mean / worst (dB) | SSIM mean / worst | max 8-bit err | codes agree mean / worst "
            "| NaN/Inf | s/image (fp32) | pass |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for label, s in summaries.items():
        if "images" not in s:
            lines.append(f"| {label} | - | {s['error']} | | | | | | no |")
            continue
        codes = (f"{100 * s['code_agreement_mean']:.2f}% / {100 * s['code_agreement_worst']:.2f}%"
                 if s["code_agreement_mean"] is not None else "n/a (no codes output)")
        lines.append(
            f"| {label} | {s['images']} | {s['psnr_mean']:.2f} / {s['psnr_worst']:.2f} | {s['ssim_mean']:.5f} / {s['ssim_worst']:.5f} "
            f"| {s['max_8bit_error']} | {codes} | {s['nonfinite']} | {s['seconds_mean']:.1f} ({s['fp32_seconds_mean']:.1f}) "
            f"| {'yes' if s['passes_bar'] else 'no'}{' (' + s['error'] + ')' if 'error' in s else ''} |"
        )
    return "\n".join(lines)


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/fp16_fidelity.py", __doc__)
    p.add_argument("--fp32", type=Path, required=True, help="the FP32 reference graph")
    p.add_argument("--fp16", action="append", type=labelled, required=True, metavar="[LABEL=]ONNX",
                   help="a reduced-precision graph to compare (repeatable)")
    p.add_argument("--images", type=Path, help=f"folder of photos, searched recursively (default {DEFAULT_IMAGES})")
    p.add_argument("--max-side", type=int, default=256, help="downscale photos to this longer side (default 256)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    common.add_threads(p, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--json", type=Path, help="write per-image rows and summaries here")
    args = p.parse_args(argv)
    for path in [args.fp32, *(path for _, path in args.fp16)]:
        if not path.is_file():
            p.error(f"model not found: {path}")

    inputs, source = load_inputs(args.images, args.max_side, args.limit)
    print(f"{len(inputs)} images from {source}, longer side <= {args.max_side} px; ONNX Runtime CPU, {args.threads} threads\n")
    results = evaluate(args.fp32, args.fp16, inputs, args.threads)
    summaries = {label: summarize(r) for label, r in results.items()}
    print("\n" + table(summaries))
    if args.json:
        args.json.write_text(json.dumps({"source": source, "max_side": args.max_side, "summaries": summaries,
                                         "results": results}, indent=1, default=float) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
