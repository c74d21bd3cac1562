"""Our nearest-code lookup (one MatMul on folded constants, ArgMin, Gather) against the original's one-hot lookup
(ArgMin, scatter a one-hot matrix, MatMul), as two exports of the same model, in ONNX Runtime on CPU:

- latency at 256x256: best of N runs, the two graphs alternating in one process (so load drift hits both);
- peak memory at 1024x1024: each graph in a fresh subprocess, peak RSS (VmHWM, or getrusage's ru_maxrss), for
  the whole model and for the lookup stage alone (each lookup exported by itself, fed the code grid of that image
  size: [1, 512, 264, 264] for 1024x1024). Both graphs carry the same export rewrites (export/rewrites.py), so the
  rest of the model costs the same in both; the one-hot graph peaks in its lookup, ours in the Swin MLP. The
  lookup stage alone shows what each lookup itself costs.

    python -m benchmarks.onnx_lookup [--ckpt PATH] [--latency-size 256x256] [--memory-size 1024x1024]
                                     [--repeats 3] [--threads 2] [--workdir DIR]

Default checkpoint: ../shared/golden/checkpoint.pth when present, else a demo checkpoint written to a temp dir.
Targets: ours <= 1.05x the one-hot graph's time, <= 0.97x its peak memory. Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.harness import specs
from contract.graph import INPUT_IMAGE, INPUT_W_STYLE, INPUT_W_TEXTURE, OUTPUT_CODES, padded_size
from runtime import onnxruntime_backend
from benchmarks.harness.worker import peak_rss_mb
from contract import cli as common

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "checkpoint.pth"
GRAPHS = {"ours": "gather", "one-hot": "onehot"}  # label -> export.onnx lookup
LOOKUP_INPUT = "z"
TIME_TARGET, MEMORY_TARGET = 1.05, 0.97


def make_session(path: str | Path, threads: int, arena: bool = True):
    # The runtime's factory, not export's: the memory child must not carry torch in its peak RSS. Sequential
    # execution and all graph optimisations are ORT's defaults; one inter-op thread matches them.
    return onnxruntime_backend.make_session(path, threads=threads, inter_op_threads=1, arena=arena)


def feeds(size: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.random((1, 3, *size), dtype=np.float32) * 0.4).astype(np.float32)  # a dark image
    return {INPUT_IMAGE: image, INPUT_W_TEXTURE: np.ones(1, np.float32), INPUT_W_STYLE: np.ones(1, np.float32)}


def code_grid(size: tuple[int, int], scale: int = 4) -> tuple[int, int]:
    """Positions the lookup sees for an image of ``size``: its padded size over 4 (``contract.graph.padded_size``,
    torch-free: the memory child must not carry torch in the RSS it measures)."""
    return tuple(padded_size(n) // scale for n in size)


def session_feeds(session, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Inputs for a whole-model graph, or for a lookup-stage graph (one input z [1, D, h, w])."""
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [LOOKUP_INPUT]:
        return feeds(size)
    channels = inputs[0].shape[1]
    return {LOOKUP_INPUT: np.random.default_rng(0).standard_normal((1, channels, *code_grid(size)), dtype=np.float32)}


def measure_peak(path: str, size: tuple[int, int], threads: int, arena: bool) -> dict:
    """Child process: load one graph, run one image, report peak RSS after loading and after the run."""
    session = make_session(path, threads, arena)
    inputs = session_feeds(session, size)
    loaded = peak_rss_mb()
    start = time.perf_counter()
    session.run(None, inputs)
    return {"load_mib": loaded, "peak_mib": peak_rss_mb(), "run_s": time.perf_counter() - start}


def peak_in_fresh_process(path: Path, size: tuple[int, int], threads: int, arena: bool) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.onnx_lookup", "--measure-peak", str(path),
           "--memory-size", specs.size_label(size), "--threads", str(threads)] + ([] if arena else ["--no-arena"])
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {path.name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_latency(paths: dict[str, Path], size: tuple[int, int], repeats: int, threads: int, arena: bool) -> tuple[dict, float]:
    """Best time per graph over ``repeats`` rounds, alternating which graph goes first; plus the max abs
    difference between the two graphs' outputs (they must compute the same image)."""
    sessions = {label: make_session(path, threads, arena) for label, path in paths.items()}
    inputs = feeds(size)
    outputs = {label: s.run(None, inputs)[0] for label, s in sessions.items()}  # warm-up run, kept for the check
    difference = float(np.abs(outputs["ours"] - outputs["one-hot"]).max())
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for round_ in range(repeats):
        order = list(sessions) if round_ % 2 == 0 else list(reversed(list(sessions)))
        for label in order:
            start = time.perf_counter()
            sessions[label].run(None, inputs)
            times[label].append(time.perf_counter() - start)
    return {label: min(t) for label, t in times.items()}, difference


def resolve_checkpoint(ckpt: str | None, workdir: Path) -> Path:
    if ckpt:
        return Path(ckpt)
    if GOLDEN.is_file():
        return GOLDEN
    from codeenhance import save_demo_checkpoint

    print("no --ckpt and no golden checkpoint: writing the (untrained) demo checkpoint", file=sys.stderr)
    return save_demo_checkpoint(workdir / "demo.pth", seed=0, overwrite=True)


def export_graphs(ckpt: Path, workdir: Path) -> dict[str, Path]:
    """Both lookups exported from the same checkpoint; a graph left in --workdir by an earlier run is reused when
    its metadata records the same checkpoint (sha256), lookup and exporting code (``exporter_fingerprint``)."""
    import onnx

    from contract.files import file_sha256
    from contract.provenance import onnx_record, stale_reasons
    from export.onnx import export_onnx, exporter_fingerprint

    checkpoint, exporter = file_sha256(ckpt), exporter_fingerprint()
    paths = {}
    for label, lookup in GRAPHS.items():
        path = workdir / f"codeenhance_{lookup}.onnx"
        if path.is_file():
            graph = onnx.load(str(path), load_external_data=False)
            same_lookup = {p.key: p.value for p in graph.metadata_props}.get("lookup") == lookup
            if same_lookup and not stale_reasons(onnx_record(graph), checkpoint_sha256=checkpoint,
                                                 exporter_fingerprint=exporter):
                paths[label] = path
                continue
        print(f"exporting the {label} graph (lookup={lookup}) ...", file=sys.stderr)
        paths[label] = export_onnx(ckpt, path, lookup=lookup, overwrite=True)
    return paths


def export_lookup_stages(ckpt: Path, workdir: Path) -> dict[str, Path]:
    """Each lookup alone, z [N, D, h, w] -> (quantized, codes int32), from the checkpoint's codebook, through the
    same exporter and ``slim`` (onnxslim, dim names cleared) as the whole graphs."""
    import onnx
    import torch

    from codeenhance import load_model
    from export.graph import GatherLookup, OneHotLookup, quiet_registry, slim

    class LookupStage(torch.nn.Module):
        def __init__(self, lookup: torch.nn.Module):
            super().__init__()
            self.lookup = lookup

        def forward(self, z: torch.Tensor):
            quantized, codes = self.lookup(z)
            return quantized, codes.to(torch.int32)

    quantizer = load_model(ckpt).quantizer
    example = torch.randn(2, quantizer.embedding.weight.shape[1], 5, 7)
    dynamic = {"z": {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("h", min=1), 3: torch.export.Dim("w", min=1)}}
    paths = {}
    for label, module in (("ours", GatherLookup(quantizer)), ("one-hot", OneHotLookup(quantizer))):
        with warnings.catch_warnings(), quiet_registry():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(LookupStage(module).eval(), (example,), dynamo=True, opset_version=18,
                                        input_names=[LOOKUP_INPUT], output_names=["quantized", OUTPUT_CODES],
                                        dynamic_shapes=dynamic, verbose=False)
        paths[label] = workdir / f"lookup_stage_{GRAPHS[label]}.onnx"
        onnx.save(slim(program.model_proto), str(paths[label]))
    return paths


def graph_facts(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {"nodes": len(graph.node), "scatters": sum(n.op_type.startswith("Scatter") for n in graph.node)}


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.3f}x ({'meets' if ratio <= target else 'MISSES'} <= {target}x)"


def table(facts: dict, best: dict, peaks: dict, args) -> str:
    from benchmarks.harness import report  # parent only: report imports export.*, the memory child must not

    lat, mem = specs.size_label(args.latency_size), specs.size_label(args.memory_size)
    header = ["whole graph", "nodes", "Scatter* ops", f"{lat} best of {args.repeats} (s)"]
    if peaks:
        header += [f"{mem} peak RSS (MiB)", f"{mem} RSS after load (MiB)", f"{mem} run (s)"]
    rows = []
    for label in GRAPHS:
        row = [label, str(facts[label]["nodes"]), str(facts[label]["scatters"]), f"{best[label]:.3f}"]
        if peaks:
            p = peaks[label]
            row += [f"{p['peak_mib']:.0f}", f"{p['load_mib']:.0f}", f"{p['run_s']:.1f}"]
        rows.append(row)
    ratio = ["ours / one-hot", "", "", verdict(best["ours"] / best["one-hot"], TIME_TARGET)]
    if peaks:
        ratio += [verdict(peaks["ours"]["peak_mib"] / peaks["one-hot"]["peak_mib"], MEMORY_TARGET), "", ""]
    return report.table(header, rows + [ratio])


def stage_table(stage_peaks: dict, args) -> str:
    from benchmarks.harness import report  # parent only, as in table()

    grid = specs.size_label(code_grid(args.memory_size))
    header = [f"lookup stage alone (code grid {grid})", "peak RSS (MiB)", "RSS after load (MiB)", "above load (MiB)", "run (s)"]
    rows = [[label, f"{q['peak_mib']:.0f}", f"{q['load_mib']:.0f}", f"{q['peak_mib'] - q['load_mib']:.0f}", f"{q['run_s']:.2f}"]
            for label, q in stage_peaks.items()]
    ours, base = stage_peaks["ours"], stage_peaks["one-hot"]
    rows.append(["ours / one-hot", verdict(ours["peak_mib"] / base["peak_mib"], MEMORY_TARGET), "",
                 f"{(ours['peak_mib'] - ours['load_mib']) / (base['peak_mib'] - base['load_mib']):.3f}x", ""])
    return report.table(header, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser("python benchmarks/onnx_lookup.py", __doc__)
    common.add_checkpoint(p, required=False, help="checkpoint (default: the golden one if present, else a demo checkpoint)")
    p.add_argument("--latency-size", type=common.size, default=(256, 256), help="HxW for latency (default 256x256)")
    p.add_argument("--memory-size", type=common.size, default=(1024, 1024), help="HxW for peak memory (default 1024x1024)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--repeats", type=common.positive_int, default=3, help="timed runs per graph (default 3; best is reported)")
    common.add_threads(p, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--no-arena", action="store_true", help="disable ONNX Runtime's CPU memory arena (both graphs)")
    p.add_argument("--workdir", help="where the two graphs are written and reused (default: a temp dir)")
    p.add_argument("--measure-peak", metavar="ONNX", help=argparse.SUPPRESS)  # child mode of the memory runs
    return p.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> None:
    ckpt = resolve_checkpoint(args.ckpt, workdir)
    paths = export_graphs(ckpt, workdir)
    facts = {label: graph_facts(path) for label, path in paths.items()}
    arena = not args.no_arena
    best, difference = measure_latency(paths, args.latency_size, args.repeats, args.threads, arena)
    peaks, stage_peaks = {}, {}
    if not args.no_memory:
        stages = export_lookup_stages(ckpt, workdir)
        for label in GRAPHS:
            print(f"peak memory of {label} at {specs.size_label(args.memory_size)} ...", file=sys.stderr)
            peaks[label] = peak_in_fresh_process(paths[label], args.memory_size, args.threads, arena)
            stage_peaks[label] = peak_in_fresh_process(stages[label], args.memory_size, args.threads, arena)
    print(
        f"checkpoint: {ckpt}; ONNX Runtime CPU, {args.threads} intra-op threads, ORT_ENABLE_ALL, sequential, "
        f"memory arena {'on' if arena else 'off'}"
    )
    print(f"max abs difference between the two graphs' outputs: {difference:.3g}\n")
    print(table(facts, best, peaks, args))
    if stage_peaks:
        print()
        print(stage_table(stage_peaks, args))


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_peak:
        print(json.dumps(measure_peak(args.measure_peak, args.memory_size, args.threads, not args.no_arena)))
        return 0
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        run(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="onnx_lookup_") as tmp:
            run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
