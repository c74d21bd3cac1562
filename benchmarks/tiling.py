"""Tiled versus whole-image enhancement on the real low-light photos: how close tiling gets, per tile and overlap.

    python benchmarks/tiling.py [--model out/golden_codes.onnx | CKPT] [--photos 6] [--longest 256]
        [--configs 95:16,127:16,127:32,191:32,127:0] [--threads 2]

CodeEnhance's IFT blocks use global mean/std statistics, so a tile sees other statistics than the whole image:
tiling is an approximation, measured here as the PSNR (8-bit) of the tiled result against the whole-image result
through the same backend. Photos are downscaled (INTER_AREA) to --longest, since the full-size model costs
seconds to tens of seconds per photo on 2 CPU cores; --photos picks that many evenly spaced from the 26 sorted
by path. Default model: the golden checkpoint's ONNX export when present (faster on CPU), else the checkpoint.
Prints a Markdown table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.inputs import PHOTO_DIR, SHARED, load_photo
from export.fidelity import list_images, psnr
from runtime import Enhancer, create_backend
from contract import cli as common

REPO = Path(__file__).resolve().parents[1]


def parse_configs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",")]


@common.run_main
def main(argv=None) -> int:
    onnx = REPO / "out" / "golden_codes.onnx"
    p = common.parser("python benchmarks/tiling.py", __doc__)
    p.add_argument("--model", type=Path, default=onnx if onnx.exists() else SHARED / "golden" / "checkpoint.pth")
    p.add_argument("--photos", type=int, default=6, help="evenly spaced subset of the sorted photos")
    p.add_argument("--longest", type=int, default=256, help="downscale to this longest side (0: full size)")
    p.add_argument("--configs", default="95:16,127:16,127:32,191:32,127:0", help="tile:overlap,...")
    common.add_threads(p, default=2)
    args = p.parse_args(argv)

    every = list_images(PHOTO_DIR)
    paths = [every[round(i)] for i in np.linspace(0, len(every) - 1, min(args.photos, len(every)))]
    configs = parse_configs(args.configs)
    backend = create_backend(args.model, threads=args.threads)
    whole_enhancer = Enhancer(backend=backend, tile=0)
    tiled = {c: Enhancer(backend=backend, tile=c[0], overlap=c[1], batch=4) for c in configs}
    psnrs = {c: [] for c in configs}
    errors = {c: [] for c in configs}
    seconds = {c: 0.0 for c in [None, *configs]}
    print(f"model {args.model} ({backend.describe().name}), {len(paths)} photos, longest side "
          f"{args.longest or 'full'}: {', '.join(str(p.relative_to(PHOTO_DIR)) for p in paths)}", file=sys.stderr)
    whole_enhancer.enhance(load_photo(paths[0], 64))  # warm-up, so the first timing is not the slowest
    for path in paths:
        photo = load_photo(path, args.longest)
        started = time.perf_counter()
        whole = whole_enhancer.enhance(photo)
        seconds[None] += time.perf_counter() - started
        for config in configs:
            started = time.perf_counter()
            out = tiled[config].enhance(photo)
            seconds[config] += time.perf_counter() - started
            psnrs[config].append(psnr(out, whole, peak=255))
            errors[config].append(np.abs(out.astype(int) - whole).mean())
        print(f"{path.relative_to(PHOTO_DIR)} {photo.shape[1]}x{photo.shape[0]}: "
              + ", ".join(f"{c[0]}/{c[1]} {psnrs[c][-1]:.2f} dB" for c in configs), file=sys.stderr, flush=True)

    print(f"\n{len(paths)} photos (longest side {args.longest or 'full'}), {Path(args.model).name}; "
          "PSNR and mean |error| of tiled vs whole-image output (8-bit)\n")
    print("| tile | overlap | mean PSNR (dB) | min PSNR (dB) | mean abs error | time vs whole |\n|---|---|---|---|---|---|")
    for config in configs:
        print(f"| {config[0]} | {config[1]} | {np.mean(psnrs[config]):.2f} | {np.min(psnrs[config]):.2f} | "
              f"{np.mean(errors[config]):.3f} | {seconds[config] / seconds[None]:.2f}x |")
    print(f"\nwhole image: {seconds[None] / len(paths):.1f} s per photo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
