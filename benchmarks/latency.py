"""Latency, memory and fidelity of every CodeEnhance backend against the PyTorch fp32 reference.

    python benchmarks/latency.py                       # embedded default (see below)
    python benchmarks/latency.py --ckpt net_g.pth --images DIR --sizes 256x256,720p --iters 20 --device cuda

The default writes an UNTRAINED demo checkpoint (official size, seed 0), exports it to ONNX (fp32 with the
gather lookup and the ``codes`` output; the one-hot baseline; the mixed-precision FP16 graph from
export.precision), and benchmarks 3 synthetic low-light images at 64x64 and 128x128 (padded to 96 and 160: the
official model takes seconds per call on a small CPU), batch 1, 1 warmup call and 3 timed calls: a run of minutes
on a small CPU, most of it making the three graphs (benchmarks/results has the figures of the last runs).

Each backend and size is measured in a fresh process (peak RSS = that process's VmHWM, since ru_maxrss is
inherited across exec; GPU memory from torch's allocator or NVML), timing the first call (load + first
inference) and then every call; the outputs of every image are compared afterwards with the reference's:
PSNR, SSIM, 8-bit max/mean error, code agreement, NaN/Inf. Latency and memory are fitted against megapixels.
Writes results.md, results.json and PNG plots to --out and prints the Markdown. Backends that cannot run here
(TensorRT, CUDA-only ones on CPU) are listed with the reason. Exit status: 0 when every backend that could
run here ran, 1 when one failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import machine, specs  # light: no torch, so the worker starts lean
from contract import cli as common
from contract.errors import InputError
from contract.provenance import check_made_from
from contract.graph import INPUT_W_STYLE, INPUT_W_TEXTURE
from benchmarks.harness.artifacts import ArtifactError, Artifacts  # imports its tools lazily

REPO = Path(__file__).resolve().parents[1]

DEFAULT_OUT = REPO / "benchmarks" / "results" / "local"  # ignored by benchmarks/results/.gitignore


def build_parser() -> argparse.ArgumentParser:
    p = common.parser("python benchmarks/latency.py", __doc__)
    src = p.add_argument_group("what to run")
    common.add_checkpoint(src, required=False, type=Path, help="checkpoint (default: an untrained demo checkpoint of --preset)")
    src.add_argument("--onnx", type=Path, help="fp32 graph for 'onnxruntime' (default: exported from the checkpoint "
                     "with the codes output)")
    src.add_argument("--onnx-fp16", type=Path, help="mixed-precision graph (default: made from the fp32 graph by "
                     "python -m export.precision)")
    src.add_argument("--engine", type=Path, help="TensorRT engine (default: built from the fp16 graph on a GPU)")
    src.add_argument("--backends", default=",".join(specs.DEFAULT_BACKENDS),
                     help=f"comma list of {', '.join(specs.BACKENDS)} (default: all). The reference "
                          f"'{specs.REFERENCE}' always runs: fidelity and speedup are measured against it")
    src.add_argument("--preset", choices=("official", "tiny"), default="official",
                     help="size of the demo checkpoint when --ckpt is not given (tiny: for tests)")
    src.add_argument("--opset", type=int, help="ONNX opset for exports made here (default: export.onnx's)")
    data = p.add_argument_group("inputs")
    common.add_sizes(data, default="64x64,128x128",
                     help="comma list of HxW or 720p/1080p/1440p/4k (default 64x64,128x128)")
    data.add_argument("--batch", type=common.positive_int, default=1, help="images per call (default 1)")
    data.add_argument("--images", type=Path, help="folder of real images, centre-cropped and resized to each size "
                      "(default: synthetic low-light scenes)")
    data.add_argument("--num-images", type=common.positive_int, default=3, help="images compared per size (default 3)")
    run = p.add_argument_group("measurement")
    run.add_argument("--warmup", type=common.non_negative_int, default=1, help="untimed calls after the first (default 1)")
    run.add_argument("--iters", type=common.positive_int, default=3, help="timed calls per backend and size (default 3)")
    common.add_threads(run, default=machine.usable_cpus(),
                       help=f"intra-op threads for torch and onnxruntime (default: usable CPUs, {machine.usable_cpus()})")
    common.add_device(run, choices=("cpu", "cuda"), default="cpu", help="where the backends run (default cpu)")
    run.add_argument("--timeout", type=common.positive_float, default=3600, help="seconds per measurement process (default 3600)")
    out = p.add_argument_group("output")
    common.add_output(out, required=False, default=DEFAULT_OUT, overwrite_help=None,
                      help=f"results folder (default {DEFAULT_OUT})")
    out.add_argument("--artifacts", type=Path, help="keep made checkpoints/graphs/engines here and reuse them on "
                     "the next run (default: a temporary folder, removed at the end)")
    p.add_argument("--_worker", metavar="JOB", help=argparse.SUPPRESS)  # internal: one measurement process
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.size_list = args.sizes
    try:
        args.backend_list = specs.parse_backends(args.backends)
    except ValueError as e:
        p.error(str(e))
    if args.images is not None and not args.images.is_dir():
        p.error(f"--images {args.images} is not a folder")
    given = [f"--{n.replace('_', '-')}" for n in ("onnx", "onnx_fp16", "engine") if getattr(args, n)]
    if given and args.ckpt is None and not args._worker:
        p.error(f"{', '.join(given)} needs --ckpt, the checkpoint it was made from: the reference must be that model")
    # The workers run from the repository root: relative paths are the user's, resolved here.
    for name in ("ckpt", "onnx", "onnx_fp16", "engine", "artifacts", "images"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(getattr(args, name)).absolute())
    if args.ckpt is not None and not args._worker:
        for name in ("onnx", "onnx_fp16"):
            if getattr(args, name) is not None:
                check_made_from(getattr(args, name), args.ckpt)
    return args


def plan_backends(args, cuda_available: bool) -> dict:
    """name -> result entry; entries with status 'skipped' carry the reason and are never started."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    entries = {}
    for name in args.backend_list:
        spec = specs.BACKENDS[name]
        reason = specs.skip_reason(spec, args.device, cuda_available, providers)
        entries[name] = {"status": "skipped" if reason else "pending", "reason": reason, "runtime": spec.runtime,
                         "precision": spec.precision_label, "summary": spec.summary, "sizes": {}}
    return entries


def save_inputs(args, work: Path) -> tuple[list[str], dict]:
    """Write every size's image batch once; returns (image names, {size: .npy path})."""
    import numpy as np

    from benchmarks.harness.inputs import benchmark_images

    names, arrays = benchmark_images(args.size_list, args.images, args.num_images)
    paths = {}
    for hw, array in arrays.items():
        paths[hw] = work / f"inputs-{specs.size_label(hw)}.npy"
        np.save(paths[hw], array)
    return names, paths


def run_worker(job: dict, work: Path, timeout: float) -> dict:
    """One measurement in a fresh process; a crash, kill or timeout becomes this row's error, not the run's."""
    stem = work / f"{job['backend']}-{job['size']}"
    job = {**job, "result": f"{stem}.result.json", "outputs": f"{stem}.outputs.npz"}
    Path(f"{stem}.job.json").write_text(json.dumps(job))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", f"{stem}.job.json"]
    log = Path(f"{stem}.log")
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"measurement process ran over --timeout {timeout:g} s"}
    if Path(job["result"]).exists():
        return {**json.loads(Path(job["result"]).read_text()), "outputs": job["outputs"]}
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    killed = " (killed: out of memory?)" if code < 0 else ""
    return {"status": "error", "reason": f"measurement process exited with status {code}{killed}: {tail}"}


def prepare_artifacts(entries: dict, artifacts) -> dict:
    """{backend: artifact path} for the backends that can run; all exports happen here, before any timing, so
    that they do not compete with a measurement. A failed artifact marks its backends as errors."""
    ready = {}
    for name, entry in entries.items():
        if entry["status"] == "pending":
            try:
                ready[name] = artifacts.get(specs.BACKENDS[name].artifact)
            except ArtifactError as e:
                entry.update(status="error", reason=str(e))
    return ready


def measure_all(args, entries: dict, ready: dict, input_paths: dict, work: Path) -> dict:
    """Run every (backend, size) measurement; returns {backend: {size: worker result}}.

    Size-major order, the reference first at each size: the backends compared at one size are measured close
    together in time, so a shared machine's load drifting during the run biases them less.
    """
    from codeenhance import padded_size
    from tqdm import tqdm

    from benchmarks.harness.analysis import size_record

    raw = {name: {} for name in ready}
    bar = tqdm(total=len(ready) * len(args.size_list), desc="benchmark", unit="run", file=sys.stderr)
    for hw in args.size_list:
        label = specs.size_label(hw)
        for name, artifact in ready.items():
            spec = specs.BACKENDS[name]
            bar.set_postfix_str(f"{name} {label}")
            job = {"backend": name, "runtime": spec.runtime, "precision": spec.precision, "artifact": str(artifact),
                   "device": args.device, "threads": args.threads, "inputs": str(input_paths[hw]), "size": label,
                   "batch": args.batch, "warmup": args.warmup, "iters": args.iters, INPUT_W_TEXTURE: 1.0, INPUT_W_STYLE: 1.0,
                   "options": dict(spec.options)}
            raw[name][label] = run_worker(job, work, args.timeout)
            entries[name]["sizes"][label] = size_record(hw, (padded_size(hw[0]), padded_size(hw[1])), args.batch,
                                                        raw[name][label])
            bar.update(1)
    bar.close()
    for name in ready:
        failed = [r for r in entries[name]["sizes"].values() if r["status"] != "ok"]
        entries[name]["status"] = "ok" if not failed else "partial" if len(failed) < len(args.size_list) else "error"
        if failed:
            entries[name]["reason"] = failed[0]["reason"]
    return raw


def compare_all(entries: dict, raw: dict, names: list[str]) -> None:
    """Fidelity and speedup of every measured row against the reference row of the same size."""
    import numpy as np

    from benchmarks.harness.analysis import scaling, speedup
    from benchmarks.harness.compare import compare_outputs, summarize

    def outputs(result: dict) -> dict:
        with np.load(result["outputs"]) as z:
            return {k: z[k] for k in z.files}

    ref_entry = entries[specs.REFERENCE]
    reference: dict[str, dict] = {}  # size label -> the reference's outputs, read once for all backends
    for name, entry in entries.items():
        for label, record in entry["sizes"].items():
            ref_record = ref_entry["sizes"].get(label)
            record["speedup_vs_reference"] = speedup(record, ref_record)
            if record["status"] != "ok" or not ref_record or ref_record["status"] != "ok":
                record["fidelity"] = None
                continue
            if label not in reference:
                reference[label] = outputs(raw[specs.REFERENCE][label])
            rows = compare_outputs(names, outputs(raw[name][label]), reference[label])
            record["fidelity"] = {"per_image": rows, "summary": summarize(rows)}
        if entry["sizes"]:
            entry["scaling"] = scaling(entry["sizes"])


def run_benchmark(args, argv: list[str]) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but this torch build sees no CUDA GPU; the reference cannot run", file=sys.stderr)
        return 2
    blocker = next(p for p in (args.out, *args.out.absolute().parents) if p.exists())
    if not blocker.is_dir():
        raise InputError(f"--out {args.out}: {blocker} is a file; name a folder for the results")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="codeenhance-latency-") as work:
        try:
            results = measure_and_compare(args, Path(work), torch.cuda.is_available())
        except (ArtifactError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    results["command"] = "python benchmarks/latency.py " + shlex.join(argv)
    write_outputs(results, args.out)
    return 1 if any(e["status"] in ("error", "partial") for e in results["backends"].values()) else 0


def measure_and_compare(args, work: Path, cuda_available: bool) -> dict:
    from tqdm import tqdm

    started = time.time()
    info = machine.describe_machine()  # before measuring: the load average says how busy the machine was
    artifacts = Artifacts(args.artifacts or work / "artifacts", ckpt=args.ckpt, onnx=args.onnx,
                          onnx_fp16=args.onnx_fp16, engine=args.engine, preset=args.preset, opset=args.opset,
                          sizes=args.size_list, batch=args.batch, threads=args.threads, device=args.device,
                          log=tqdm.write)
    entries = plan_backends(args, cuda_available)
    names, input_paths = save_inputs(args, work)
    raw = measure_all(args, entries, prepare_artifacts(entries, artifacts), input_paths, work)
    compare_all(entries, raw, names)
    settings = {k: v for k, v in vars(args).items() if k not in ("size_list", "backend_list", "_worker", "debug")}
    settings.update(sizes=[specs.size_label(hw) for hw in args.size_list], backends=args.backend_list)
    return {
        "machine": {**info, "load_average_end": machine.load_average()},
        "machine_line": machine.one_line(info),
        "settings": settings,
        "reference": specs.REFERENCE,
        "artifacts": artifacts.describe(),
        "image_source": str(args.images) if args.images else "synthetic low-light scenes (seed 0)",
        "images": names,
        "backends": entries,
        "wall_s": time.time() - started,
        "notes": run_notes(info, args),
    }


def run_notes(info: dict, args) -> list[str]:
    """Caveats a reader needs to trust the numbers."""
    notes = ["`ru_maxrss_mb` in results.json is getrusage's figure, which Linux carries over from the parent "
             "across exec (so it shows the parent's peak); `peak_rss_mb` (VmHWM) is the worker's own."]
    load = (info.get("load_average_start") or [0.0])[0]
    if args.device == "cpu" and load > info["cpus_usable"] - 0.5:
        notes.append(f"the machine was busy (1-minute load average {load:.1f} on {info['cpus_usable']} usable CPUs "
                     "when the run started): latencies are inflated, multi-threaded ones most, since a parallel "
                     "region waits for its slowest thread; --threads 1 gives steadier numbers on a shared machine.")
    return notes


def write_outputs(results: dict, out: Path) -> None:
    from benchmarks.harness import report

    plots, note = report.write_plots(results, out)
    results["plots"] = plots
    results["notes"] += [note] if note else []
    markdown = report.render_markdown(results)
    (out / "results.md").write_text(markdown)
    report.write_json(results, out / "results.json")
    print(markdown)
    print(f"wrote {out / 'results.md'}, results.json and {len(plots)} plot(s); {results['wall_s']:.0f} s",
          file=sys.stderr)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args._worker:
        from benchmarks.harness import worker

        return worker.main(args._worker)
    return run_benchmark(args, argv)


if __name__ == "__main__":
    sys.exit(main())
