"""The CPU AOTInductor package beside ONNX Runtime fp32 and eager torch: latency and peak memory at one size.

    python benchmarks/aoti_cpu.py --ckpt CKPT --pt2 model.pt2 --onnx model.onnx [--size 256x256] [--repeats 5]
        [--threads 2] [--images DIR]

Latency: these three (package, ONNX Runtime, eager) loaded in one process, one warm-up call each, then --repeats rounds that run each
backend once in turn (alternating, so background load hits them alike); the median per backend is printed.
Peak memory: a fresh subprocess per backend that imports only what the backend needs, loads, runs one warm-up and
one call, and reports its peak RSS (ru_maxrss). The package must have a bucket for --size.
Fidelity (--images): every photo in DIR resized to --size (the bucket's shape), through the package and through
eager torch, compared with export.fidelity.compare_image.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np

from contract import cli as common
from contract.images import list_images, load_rgb

BACKENDS = ("aoti", "onnxruntime", "torch")


def make_backend(name: str, args):
    if name == "aoti":
        from runtime.aoti_backend import AotiBackend

        return AotiBackend(args.pt2, threads=args.threads)
    if name == "onnxruntime":
        from runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(args.onnx, threads=args.threads)
    from runtime.torch_backend import TorchBackend

    return TorchBackend(args.ckpt, threads=args.threads)


def inputs(size):
    h, w = size
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    return x, np.ones(1, np.float32), np.ones(1, np.float32)


def timed(backend, feed) -> float:
    start = time.perf_counter()
    backend.infer(*feed)
    return time.perf_counter() - start


def peak_rss_child(name: str, args) -> dict:
    """Run in a fresh process: load, warm-up, one call; peak RSS in MiB."""
    start = time.perf_counter()
    backend = make_backend(name, args)
    backend.load()
    load_s = time.perf_counter() - start
    feed = inputs(args.size)
    timed(backend, feed)
    call_s = timed(backend, feed)
    return {"backend": name, "load_s": round(load_s, 2), "call_s": round(call_s, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def fidelity_against_torch(backends: dict, folder: str, size) -> str:
    """The package against eager torch on real photos at the bucket's size: one summary line."""
    from export.fidelity import compare_image, summarize, to_nchw

    h, w = size
    ones = np.ones(1, np.float32)
    rows = []
    for path in list_images(folder):
        x = to_nchw(cv2.resize(load_rgb(path), (w, h), interpolation=cv2.INTER_AREA))
        rows.append(compare_image(backends["aoti"].infer(x, ones, ones).enhanced, backends["torch"].infer(x, ones, ones).enhanced))
    s = summarize(rows)
    return (f"aoti vs eager torch on {s['images']} photos from {folder} resized to {h}x{w}: PSNR mean "
            f"{s['psnr_mean']:.2f} dB, worst {s['psnr_worst']:.2f} dB, max 8-bit error {s['max_8bit_error']}, "
            f"NaN/Inf {s['nonfinite']}")


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/aoti_cpu.py", __doc__)
    common.add_checkpoint(p)
    p.add_argument("--pt2", required=True)
    p.add_argument("--onnx", required=True)
    p.add_argument("--size", type=common.size, default=(256, 256))
    p.add_argument("--repeats", type=int, default=5)
    common.add_threads(p, default=2)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--images", help="also compare the package with eager torch on these photos (folder)")
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(peak_rss_child(args.child, args)))
        return 0
    names = args.backends.split(",")
    size = f"{args.size[0]}x{args.size[1]}"
    memory = {}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--ckpt", args.ckpt, "--pt2", args.pt2, "--onnx", args.onnx,
               "--size", size, "--threads", str(args.threads)]
        memory[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    backends = {name: make_backend(name, args) for name in names}
    feed = inputs(args.size)
    for b in backends.values():
        b.load()
        timed(b, feed)  # warm-up
    times = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, b in backends.items():
            times[name].append(timed(b, feed))
    ref = statistics.median(times["onnxruntime"]) if "onnxruntime" in times else None
    print(f"size {size}, batch 1, threads {args.threads}, {args.repeats} alternating rounds")
    print("| backend | median s | runs | vs ORT | peak RSS MiB (fresh process) | load s |")
    print("|---|---|---|---|---|---|")
    for name in names:
        med = statistics.median(times[name])
        ratio = f"{med / ref:.2f}x" if ref else "-"
        runs = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"| {name} | {med:.3f} | {runs} | {ratio} | {memory[name]['peak_rss_mib']} | {memory[name]['load_s']} |")
    if args.images:
        if not {"aoti", "torch"} <= backends.keys():
            p.error("--images compares aoti with torch: keep both in --backends")
        print("\n" + fidelity_against_torch(backends, args.images, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
