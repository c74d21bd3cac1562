"""OpenVINO fp32 / bf16 against ONNX Runtime fp32 on the CPU: speed, peak memory and bf16 fidelity.

    python benchmarks/openvino_speed.py --onnx out/model_codes.onnx [--sizes 256x256,720x1280] [--repeats 3]
        [--threads 2] [--images ../shared/data/lowlight] [--max-side 256] [--widen NAME=TOKEN,...] [--json out.json]

The graph should be exported with codes (``python -m export.onnx --ckpt CKPT --out model_codes.onnx --with-codes``)
so that code agreement can be measured; ``--ckpt`` exports it here when --onnx does not exist.

Speed: every backend is loaded once, warmed up at each size (OpenVINO prepares its kernels per input shape on the
first call), then the backends run alternately, ``--repeats`` rounds, best time kept. Peak memory: each row of
RSS_KINDS in a fresh process (load + one run at each of --rss-sizes), VmHWM; ``ov-bf16-ir`` starts from the IR that
``python -m export.openvino`` writes (the deployment form), ``ov-bf16`` converts the .onnx on load. Fidelity: OpenVINO bf16 against OpenVINO fp32 and ONNX
Runtime fp32 on every photo (downscaled to --max-side), with export.fidelity's metrics (PSNR, code agreement, NaN).

``--widen`` adds bf16 variants with more nodes kept fp32, for the time/fidelity trade-off: TOKEN is an op type or ONNX
node name (pattern) as in ``export.precision --keep-fp32``, or ``codes-path`` = every node the codes depend on
(the encoder, semantic backbone, Swin context module). Targets: bf16 time <= 0.5x ONNX Runtime fp32 at
256x256 and 720p, peak memory not above ONNX Runtime's, and the image bar (export.fidelity.REDUCED_PRECISION_BAR).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contract import cli as common
from contract.sizes import parse_size
from export import fidelity

REPO = Path(__file__).resolve().parents[1]

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "lowlight"
# Peak memory rows: ONNX Runtime, OpenVINO converting the .onnx on load (fp32, bf16), from the exported bf16 IR,
# and the bf16 model compiled once for every shape.
RSS_KINDS = ("ort-fp32", "ov-fp32", "ov-bf16", "ov-bf16-ir", "ov-bf16-dynamic")


def codes_path(onnx_path: Path) -> list[str]:
    """Names of every float node the ArgMin depends on (what decides the codes)."""
    import onnx

    from contract.precision_rules import index_graph, walk_up

    ix = index_graph(onnx.load(str(onnx_path), load_external_data=False))
    found = set()
    for arg in (n for n in ix.nodes if n.op_type in ("ArgMin", "ArgMax")):
        found |= walk_up(ix, arg.input[:1], lambda n: True)
    return sorted(n for n in found if ix.has_precision(ix.by_name[n]))


def keep_list(tokens: list[str], onnx_path: Path) -> list[str]:
    out = []
    for token in tokens:
        out += codes_path(onnx_path) if token == "codes-path" else [token]
    return out


def make_backend(kind: str, onnx_path: Path, threads: int, keep=(), ir: Path | None = None):
    """ort-fp32; ov-fp32, ov-bf16 (from the .onnx, converted on load); ov-bf16-ir (the IR from export.openvino);
    ov-bf16-dynamic (one compiled model for every shape)."""
    if kind == "ort-fp32":
        from runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, threads=threads)
    from runtime.openvino_backend import OpenVINOBackend

    if kind == "ov-bf16-ir":
        return OpenVINOBackend(ir, threads=threads)
    precision = "fp32" if kind == "ov-fp32" else "bf16"
    shapes = "dynamic" if kind.endswith("-dynamic") else "static"
    return OpenVINOBackend(onnx_path, precision=precision, threads=threads, keep_fp32=keep, shapes=shapes)


def ones(n: int = 1) -> np.ndarray:
    return np.ones(n, np.float32)


def synthetic(hw: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((1, 3, *hw), dtype=np.float32) * 0.3).astype(np.float32)


# ------------------------------------------------------------------------------------------------ speed


def speed(backends: dict, sizes, repeats: int) -> dict:
    results = {}
    for hw in sizes:
        x = synthetic(hw)
        label = f"{hw[0]}x{hw[1]}"
        times = {name: [] for name in backends}
        for name, b in backends.items():  # warm-up: OpenVINO builds its kernels for a new shape on the first call
            t0 = time.perf_counter()
            b.infer(x, ones(), ones())
            print(f"  {label} warm-up {name}: {time.perf_counter() - t0:.2f} s", flush=True)
        for r in range(repeats):
            for name, b in backends.items():
                t0 = time.perf_counter()
                b.infer(x, ones(), ones())
                times[name].append(time.perf_counter() - t0)
            print(f"  {label} round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
        results[label] = {name: {"best_s": min(t), "runs_s": t} for name, t in times.items()}
    return results


def peak_rss(kind: str, onnx_path: Path, hw, threads: int, keep=(), ir: Path | None = None) -> dict:
    """Peak RSS of a fresh process that loads the backend and runs once at ``hw``."""
    cmd = [sys.executable, __file__, "--worker", kind, "--onnx", str(onnx_path), "--threads", str(threads),
           "--worker-size", f"{hw[0]}x{hw[1]}", "--worker-keep", json.dumps(list(keep))] + (["--ir", str(ir)] if ir else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def vm_hwm_mib() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries the pre-exec high-water mark over exec, so a child
    forked from a big parent reports the parent's size (every backend would show the parent's one figure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> int:
    hw = parse_size(args.worker_size)
    backend = make_backend(args.worker, args.onnx, args.threads, json.loads(args.worker_keep), args.ir)
    t0 = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.infer(synthetic(hw), ones(), ones())
    print(json.dumps({"peak_rss_mib": vm_hwm_mib(), "load_s": load_s,
                      "first_run_s": time.perf_counter() - t0}))
    return 0


# --------------------------------------------------------------------------------------------- fidelity


def fidelity_table(backends: dict, photos, references=("ov-fp32", "ort-fp32")) -> dict:
    outputs = {name: [] for name in backends}
    for path, image in photos:
        x = fidelity.to_nchw(image)
        line = [f"{path} {image.shape[1]}x{image.shape[0]}"]
        for name, b in backends.items():
            t0 = time.perf_counter()
            r = b.infer(x, ones(), ones())
            outputs[name].append([r.enhanced, r.codes] if r.codes is not None else [r.enhanced])
            line.append(f"{name} {time.perf_counter() - t0:.1f}s")
        print("  " + ", ".join(line), flush=True)
    pairs = [("ov-fp32", "ort-fp32")] + [(n, ref) for n in backends if n not in references for ref in references]
    table = {}
    for name, ref in pairs:
        rows = [fidelity.compare_outputs(b, a) for a, b in zip(outputs[ref], outputs[name])]
        table[f"{name} vs {ref}"] = fidelity.summarize(rows)
    return table


# ------------------------------------------------------------------------------------------------ main


def describe_ov(backend) -> dict:
    info = backend.describe()
    report = info.extra.get("runtime_precision", {})
    return {"precision": info.precision, "device": info.device, "openvino": info.extra.get("openvino"),
            "hint": info.extra.get("inference_precision_hint"), "compute_nodes": report.get("compute_nodes"),
            "by_layer_type": report.get("by_layer_type"), "lookup": report.get("lookup"),
            "fp32_islands": info.extra.get("fp32_islands")}


def markdown(result: dict) -> str:
    lines = ["| size | " + " | ".join(result["backends"]) + " | bf16 / ORT fp32 |",
             "|---|" + "---|" * (len(result["backends"]) + 1)]
    for size, row in result["speed"].items():
        ort = row["ort-fp32"]["best_s"]
        ratio = row["ov-bf16"]["best_s"] / ort if "ov-bf16" in row else float("nan")
        lines.append(f"| {size} | " + " | ".join(f"{row[n]['best_s']:.2f} s" for n in result["backends"]) + f" | {ratio:.3f}x |")
    if result.get("rss"):
        lines += ["", "| peak RSS (fresh process: load + one image) | " + " | ".join(RSS_KINDS) + " | bf16 IR / ORT fp32 |",
                  "|---|" + "---|" * (len(RSS_KINDS) + 1)]
        for size, row in result["rss"].items():
            ratio = row["ov-bf16-ir"]["peak_rss_mib"] / row["ort-fp32"]["peak_rss_mib"]
            lines.append(f"| {size} | " + " | ".join(f"{row[k]['peak_rss_mib']:.0f} MiB" for k in RSS_KINDS) + f" | {ratio:.2f}x |")
    if result.get("fidelity"):
        lines += ["", "| comparison | PSNR mean / worst | max 8-bit err | code agreement mean / worst | NaN/Inf |",
                  "|---|---|---|---|---|"]
        for name, s in result["fidelity"].items():
            codes = (f"{100 * s['code_agreement_mean']:.3f}% / {100 * s['code_agreement_worst']:.3f}%"
                     if s["code_agreement_mean"] is not None else "n/a")
            lines.append(f"| {name} | {s['psnr_mean']:.2f} / {s['psnr_worst']:.2f} dB | {s['max_8bit_error']} | {codes} | {s['nonfinite']} |")
    return "\n".join(lines)


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/openvino_speed.py", __doc__)
    p.add_argument("--onnx", type=Path, required=True, help="the fp32 graph (exported --with-codes)")
    common.add_checkpoint(p, required=False, type=Path, help="export --onnx from this checkpoint first when it does not exist")
    p.add_argument("--sizes", default="256x256,720p", help="HxW list for speed (720p, 1080p accepted)")
    p.add_argument("--repeats", type=int, default=3)
    common.add_threads(p, default=2)
    p.add_argument("--rss-sizes", default="256x256,720p", help="input sizes of the peak-memory runs ('' to skip)")
    p.add_argument("--ir", type=Path, help="the bf16 IR for the ov-bf16-ir memory rows (default: written by "
                                           "export.openvino into a temporary folder, removed at the end)")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="photos for fidelity ('' to skip)")
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--widen", action="append", default=[], metavar="NAME=TOKEN,...",
                   help="an extra bf16 variant keeping these fp32 (op types, node names, or codes-path)")
    p.add_argument("--widen-speed-sizes", default="256x256", help="sizes at which the --widen variants are timed")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-size", help=argparse.SUPPRESS)
    p.add_argument("--worker-keep", default="[]", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    if not args.onnx.is_file():
        if not args.ckpt:
            p.error(f"{args.onnx} not found; pass --ckpt to export it")
        from export.onnx import export_onnx

        export_onnx(args.ckpt, args.onnx, with_codes=True)

    import openvino

    widen = {}
    for spec in args.widen:
        name, _, tokens = spec.partition("=")
        widen[f"ov-bf16+{name}"] = keep_list([t for t in tokens.split(",") if t], args.onnx)
    print(f"OpenVINO {openvino.get_version()}; load average {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)

    kinds = ["ort-fp32", "ov-fp32", "ov-bf16"]
    backends = {k: make_backend(k, args.onnx, args.threads) for k in kinds}
    backends.update({k: make_backend("ov-bf16", args.onnx, args.threads, keep) for k, keep in widen.items()})
    for name, b in backends.items():
        t0 = time.perf_counter()
        b.load()
        print(f"loaded {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    result = {"onnx": str(args.onnx), "openvino": openvino.get_version(), "threads": args.threads,
              "backends": kinds, "load_average_start": os.getloadavg(),
              "openvino_nodes": {k: describe_ov(b) for k, b in backends.items() if k != "ort-fp32"}}
    for k, d in result["openvino_nodes"].items():
        print(f"{k}: {d['precision']} on {d['device']}, hint {d['hint']}, compute nodes {d['compute_nodes']}, lookup {d['lookup']}")

    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    result["speed"] = speed({k: backends[k] for k in kinds}, sizes, args.repeats)
    if widen:
        wsizes = [parse_size(s) for s in args.widen_speed_sizes.split(",") if s]
        result["widen_speed"] = speed({"ort-fp32": backends["ort-fp32"], "ov-bf16": backends["ov-bf16"],
                                       **{k: backends[k] for k in widen}}, wsizes, args.repeats)

    if args.images:
        folder = Path(args.images)
        paths = fidelity.list_images(folder)
        photos = [(str(path.relative_to(folder)), fidelity.load_rgb(path, args.max_side)) for path in paths]
        print(f"fidelity on {len(photos)} photos from {args.images}, longest side <= {args.max_side}", flush=True)
        result["fidelity"] = fidelity_table(backends, photos)
    for b in backends.values():
        b.close()
    del backends

    if args.rss_sizes:
        with tempfile.TemporaryDirectory(prefix="ov-speed-") as tmp:
            ir = args.ir
            if ir is None:
                from export.openvino import export_ir

                ir = Path(tmp) / f"{args.onnx.stem}-bf16.xml"
                export_ir(args.onnx, ir, "bf16", threads=args.threads, check=False)  # fidelity is measured above
            result["rss"] = {}
            for size in args.rss_sizes.split(","):
                hw = parse_size(size)
                label = f"{hw[0]}x{hw[1]}"
                result["rss"][label] = {}
                for k in RSS_KINDS:
                    result["rss"][label][k] = peak_rss(k, args.onnx, hw, args.threads, ir=ir)
                    print(f"  peak RSS {k} at {label}: {result['rss'][label][k]}", flush=True)
    result["load_average_end"] = os.getloadavg()

    print("\n" + markdown(result))
    if "widen_speed" in result:
        for size, row in result["widen_speed"].items():
            ort = row["ort-fp32"]["best_s"]
            print(f"\nwidened variants at {size}: " + ", ".join(f"{k} {v['best_s']:.2f} s ({v['best_s'] / ort:.3f}x ORT)" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
