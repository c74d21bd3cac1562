"""Eager PyTorch CPU latency of the re-implemented CodeEnhance (fp32), to compare with the original's figures
(../shared/SPEC.md; README, "Eager CPU speed", has both).

    python benchmarks/eager_cpu.py [--ckpt PATH] [--sizes 256x256,400x600] [--repeats 5] [--threads N]

Default checkpoint: ../shared/golden/checkpoint.pth when present, else a freshly written demo checkpoint.
"""
from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import codeenhance
from benchmarks.harness.specs import parse_size
from contract import cli as common

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "checkpoint.pth"


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/eager_cpu.py", __doc__)
    common.add_checkpoint(p, required=False, type=Path, help="checkpoint (default: see above)")
    p.add_argument("--sizes", default="256x256,400x600")
    p.add_argument("--repeats", type=int, default=5)
    common.add_threads(p, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ckpt = args.ckpt
    if ckpt is None:
        ckpt = GOLDEN if GOLDEN.exists() else codeenhance.save_demo_checkpoint(Path(tempfile.mkdtemp()) / "demo.pth")
    model = codeenhance.load_model(ckpt)
    print(f"checkpoint: {ckpt}\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads\n")
    print("| input | padded | first call (s) | median (s) | min (s) |\n|---|---|---|---|---|")
    for size in args.sizes.split(","):
        h, w = parse_size(size)
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 0.3
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            model.enhance(x)
            times.append(time.perf_counter() - t0)
        first, rest = times[0], times[1:]
        hp, wp = codeenhance.padded_size(h), codeenhance.padded_size(w)
        print(f"| {h}x{w} | {hp}x{wp} | {first:.2f} | {statistics.median(rest):.2f} | {min(rest):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
