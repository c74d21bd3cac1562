"""Triton under concurrent load on localhost, beside the in-process Enhancer on the same model.

    python benchmarks/triton_load.py [--model model.onnx] [--size 192x256] [--requests 48] [--clients 1,4,16]

For each server variant (dynamic batching on, off) a real tritonserver (runtime.serve.TritonServer) is started on
free local ports; N client threads (each with its own HTTP connection, through runtime.Enhancer +
TritonBackend) send same-size photos-like images until the request budget or the time limit of the level is
spent. Reported per level: throughput (images/s), latency p50/p99, errors, and the largest 8-bit difference of any
answer from the in-process result (so no request is lost or silently wrong). Without --model the tiny preset is
exported to the work folder (untrained weights: speed only). Only 127.0.0.1 is contacted; every loop is bounded.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from export.triton import PYTHON_MODEL, Serving, write_repository
from runtime import Enhancer
from runtime.serve import TritonServer, free_port
from runtime.triton_backend import TritonBackend
from contract import cli as common


def tiny_model(workdir: Path) -> Path:
    from codeenhance import TINY, save_demo_checkpoint
    from export.onnx import export_onnx

    onnx = workdir / "tiny.onnx"
    if not onnx.exists():
        export_onnx(save_demo_checkpoint(workdir / "tiny.pth", seed=0, config=TINY), onnx)
    return onnx


def make_images(count: int, h: int, w: int) -> list[np.ndarray]:
    """Smooth dark uint8 BGR images (low-light-like), all of one size, all different."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for _ in range(count):
        a, b, c = rng.random(3)
        base = 40 * (0.5 + 0.5 * np.sin(xs / (8 + 30 * a) + ys / (8 + 30 * b) + 6 * c))
        noise = rng.normal(0, 3, (h, w, 3))
        images.append(np.clip(base[..., None] * np.array([0.8, 1.0, 1.2]) + noise, 0, 255).astype(np.uint8))
    return images


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(make_enhancer, images, expected, clients: int, requests: int, time_limit: float) -> dict:
    """``clients`` threads share a budget of ``requests`` images and stop at ``time_limit`` seconds."""
    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "errors": [], "max_diff": 0}
    deadline = time.monotonic() + time_limit

    def client():
        enhancer = make_enhancer()
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = state["next"]
                    if index >= requests:
                        return
                    state["next"] += 1
                image = images[index % len(images)]
                start = time.perf_counter()
                try:
                    out = enhancer.enhance(image)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        state["errors"].append(f"request {index}: {e}")
                    continue
                elapsed = time.perf_counter() - start
                diff = int(np.abs(out.astype(int) - expected[index % len(images)].astype(int)).max())
                with lock:
                    state["latencies"].append(elapsed)
                    state["max_diff"] = max(state["max_diff"], diff)
        finally:
            enhancer.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = state["latencies"]
    return {"clients": clients, "done": len(lat), "errors": len(state["errors"]), "error_samples": state["errors"][:3],
            "wall_s": round(wall, 2), "throughput_ips": round(len(lat) / wall, 2) if wall else 0.0,
            "p50_ms": round(1000 * percentile(lat, 50), 1), "p99_ms": round(1000 * percentile(lat, 99), 1),
            "max_8bit_diff": state["max_diff"]}


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/triton_load.py", __doc__)
    p.add_argument("--model", type=Path, help="ONNX graph (default: the tiny preset, exported to --workdir)")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--size", default="192x256", help="HxW of every image (default 192x256)")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    p.add_argument("--requests", type=int, default=48, help="images per level (default 48)")
    p.add_argument("--time-limit", type=float, default=90.0, help="seconds per level at most (default 90)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--delay-us", type=int, default=5000, help="dynamic batching queue delay (default 5000)")
    common.add_output(p, required=False, overwrite_help=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    levels = [int(c) for c in args.clients.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="triton-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_model(workdir)
    images = make_images(16, h, w)

    local = Enhancer(model)
    expected = [local.enhance(image) for image in images]  # also warms ORT up
    results = {"model": str(model), "preset": None if args.model else "tiny", "size": [h, w],
               "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                          f"{__import__('os').cpu_count()} CPUs", "levels": []}
    for clients in levels:
        row = run_level(lambda: _Shared(local), images, expected, clients, args.requests, args.time_limit)
        results["levels"].append({"variant": "in-process Enhancer (one shared session)", **row})
        print(json.dumps(results["levels"][-1]), file=sys.stderr, flush=True)
    local.close()

    for batching in (True, False):
        repo = workdir / f"repo-{'batching' if batching else 'single'}"
        write_repository(model, repo, serving=Serving(max_batch=args.max_batch, dynamic_batching=batching,
                                                      delay_us=args.delay_us), overwrite=True)
        server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), log=None, models=[PYTHON_MODEL])
        server.start()
        try:
            url = server.model_url(PYTHON_MODEL)
            warm = Enhancer(backend=TritonBackend(url))
            warm.enhance(images[0])
            warm.close()
            for clients in levels:
                row = run_level(lambda: Enhancer(backend=TritonBackend(url)), images, expected, clients,
                                args.requests, args.time_limit)
                variant = f"Triton, dynamic batching {'on (delay ' + str(args.delay_us) + ' us)' if batching else 'off'}"
                results["levels"].append({"variant": variant, **row})
                print(json.dumps(results["levels"][-1]), file=sys.stderr, flush=True)
        finally:
            server.stop()

    print(f"\nmodel {results['model']} ({results['preset'] or 'given'}), {h}x{w} images, {results['machine']}\n")
    print("| variant | clients | images | errors | images/s | p50 ms | p99 ms | max 8-bit diff vs in-process |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["levels"]:
        print(f"| {r['variant']} | {r['clients']} | {r['done']} | {r['errors']} | {r['throughput_ips']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['max_8bit_diff']} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in results["levels"]) else 1


class _Shared:
    """The in-process baseline's clients share one Enhancer (one ORT session, as a server process would)."""

    def __init__(self, enhancer):
        self.enhancer = enhancer

    def enhance(self, image):
        return self.enhancer.enhance(image)

    def close(self):
        pass


if __name__ == "__main__":
    sys.exit(main())
