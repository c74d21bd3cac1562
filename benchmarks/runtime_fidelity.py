"""8-bit fidelity of the ONNX Runtime backend against the torch reference on the real low-light photos.

    python benchmarks/runtime_fidelity.py [--ckpt CKPT] [--onnx out/golden_codes.onnx] [--photos 26]
        [--longest 256] [--radius 4] [--threads 2]

Both backends get the same float input (RGB/255 of the photo, downscaled with INTER_AREA so that its longest side
is --longest); outputs are compared after rounding to 8 bits (clamp, x255, round). Pixels within --radius code
cells (4 px each) of a code index that differs between the two are reported apart: one flipped index legitimately
changes a whole patch. The ONNX file is exported (with codes) from the checkpoint when it does not exist.
Default checkpoint: ../shared/golden/checkpoint.pth.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
from benchmarks.harness.inputs import PHOTO_DIR, SHARED, load_photo
from export.fidelity import code_agreement, list_images, to_8bit
from runtime.enhancer import to_model_input
from contract import cli as common

CODE_CELL = 4  # codes are at 1/4 of the padded resolution


def code_change_mask(codes_a: np.ndarray, codes_b: np.ndarray, hw: tuple[int, int], radius: int) -> np.ndarray:
    """[H, W] bool: pixels within ``radius`` code cells of an index that differs ([1,1,Hc,Wc] codes)."""
    changed = (codes_a.reshape(codes_a.shape[-2:]) != codes_b.reshape(codes_b.shape[-2:])).astype(np.uint8)
    if radius:
        changed = cv2.dilate(changed, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    full = np.repeat(np.repeat(changed, CODE_CELL, axis=0), CODE_CELL, axis=1)
    return full[: hw[0], : hw[1]].astype(bool)


def compare_backends(reference, candidate, photos, *, w_texture=1.0, w_style=1.0, radius=4) -> list[dict]:
    """Per photo: max/mean 8-bit error (over pixels and channels), code agreement, and the error away from
    changed codes. Both backends must report codes."""
    rows = []
    for photo in photos:
        x = to_model_input(photo)[0][None]
        weights = (np.full(1, w_texture, np.float32), np.full(1, w_style, np.float32))
        ref, cand = reference.infer(x, *weights), candidate.infer(x, *weights)
        error = np.abs(to_8bit(ref.enhanced[0]) - to_8bit(cand.enhanced[0])).max(axis=0)
        near = code_change_mask(ref.codes, cand.codes, x.shape[2:], radius)
        away = error[~near]
        rows.append({
            "size": f"{x.shape[2]}x{x.shape[3]}",
            "max_error": int(error.max()),
            "mean_error": float(error.mean()),
            "code_agreement": code_agreement(ref.codes, cand.codes),
            "near_code_changes": float(near.mean()),
            "max_error_outside_code_changes": int(away.max()) if away.size else 0,
            "mean_error_outside_code_changes": float(away.mean()) if away.size else 0.0,
        })
    return rows


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/runtime_fidelity.py", __doc__)
    common.add_checkpoint(p, required=False, type=Path, default=SHARED / "golden" / "checkpoint.pth")
    p.add_argument("--onnx", type=Path, default=REPO / "out" / "golden_codes.onnx")
    p.add_argument("--photos", type=int, default=26, help="how many photos (sorted by path), default all")
    p.add_argument("--longest", type=int, default=256, help="downscale to this longest side (0: full size)")
    p.add_argument("--radius", type=int, default=4, help="code cells around a changed code left out")
    common.add_threads(p, default=2)
    args = p.parse_args(argv)

    from runtime.onnxruntime_backend import OnnxRuntimeBackend
    from runtime.torch_backend import TorchBackend

    if not args.onnx.exists():
        from export.onnx import export_onnx

        print(f"exporting {args.ckpt} -> {args.onnx} (with codes)", file=sys.stderr)
        export_onnx(args.ckpt, args.onnx, with_codes=True)
    paths = list_images(PHOTO_DIR)[: args.photos]
    torch_backend = TorchBackend(args.ckpt, threads=args.threads)
    ort_backend = OnnxRuntimeBackend(args.onnx, threads=args.threads)
    print(f"checkpoint {args.ckpt}\nonnx {args.onnx}\n{len(paths)} photos, longest side {args.longest or 'full'}, "
          f"code-change radius {args.radius} cells\n")
    print("| photo | size | max err | mean err | code agreement | px near changed codes | max err elsewhere | "
          "mean err elsewhere |\n|---|---|---|---|---|---|---|---|")
    rows, started = [], time.perf_counter()
    for path in paths:
        row = compare_backends(torch_backend, ort_backend, [load_photo(path, args.longest)], radius=args.radius)[0]
        rows.append(row)
        print(f"| {path.relative_to(PHOTO_DIR)} | {row['size']} | {row['max_error']} | {row['mean_error']:.4f} | "
              f"{row['code_agreement']:.4%} | {row['near_code_changes']:.2%} | "
              f"{row['max_error_outside_code_changes']} | {row['mean_error_outside_code_changes']:.4f} |", flush=True)
    print(f"| **all** | | {max(r['max_error'] for r in rows)} | {np.mean([r['mean_error'] for r in rows]):.4f} | "
          f"{np.mean([r['code_agreement'] for r in rows]):.4%} | {np.mean([r['near_code_changes'] for r in rows]):.2%} "
          f"| {max(r['max_error_outside_code_changes'] for r in rows)} | "
          f"{np.mean([r['mean_error_outside_code_changes'] for r in rows]):.4f} |")
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
