"""python -m export.aoti --ckpt CKPT --out model.pt2: CodeEnhance as an AOTInductor package (compiled C++/CUDA).

The package is compiled from the torch.export program of ``export.graph.EnhanceGraph``, the module the ONNX export
traces (same export-time lookup and rewrites, clamp, int32 codes), loaded later by ``runtime.aoti_backend`` with
``torch._inductor.aoti_load_package`` and no model code.

Shapes. By default every requested size becomes a *static bucket*: the padded size (Hp, Wp) the model would pad it
to (``contract.graph.padded_size``: the next multiple of the pad multiple m strictly above H), with a dynamic batch
(1..--max-batch). A bucket's program takes the image at the top-left of an Hp x Wp canvas plus its true size
``size`` = int64 [H, W]; inside the program the original's flip padding is a gather with indices computed from
``size`` (the values beyond H, W in the canvas are never read), so the padded image is exactly the eager model's.
The network then runs on static shapes and returns [N,3,Hp,Wp]; the caller crops [:H, :W] (a view). A bucket serves every input with Hp-m <= H < Hp and Wp-m <= W < Wp. ``--dynamic`` adds
one program with dynamic N, H, W instead: literally ``export.graph.capture``, padding and crop inside; it compiles
much more slowly (see the module's compile-time notes in the report) and its kernels are generic in H, W.

Precision: fp32 (TF32 off on CUDA, so it is true fp32) or fp16 (CUDA only): the program traced under
autocast(fp16) with the FP32 islands of the torch backend (``codeenhance.islands.keep_fp32_islands``: the
nearest-code lookup and the IFT statistics). Metadata (checkpoint sha256, precision, buckets, torch, device,
CPU/GPU capability) is written inside the package, ``extra/codeenhance.json`` (``contract.aoti_package``), and checked
when it is loaded. A C++ compiler is needed to build (and only to build).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import codeenhance
import codeenhance.network
from codeenhance import CodeEnhance
from codeenhance.padding import padded_size, symmetric_indices
from contract.aoti_package import DYNAMIC_MODEL, META_NAME, META_PAD_MULTIPLE, PACKAGE_KIND, PACKAGE_SCHEMA, bucket_name
from contract.engine_sidecar import format_sidecar
from contract.integrity import seal_zip
from contract.provenance import Environment, Provenance
from contract import sizes as contract_sizes
from contract import cli as common
from contract.errors import InputError, MissingDependency
from contract.graph import FP16, FP32, INPUT_NAMES, PAD_MULTIPLE, reported_precision

from .graph import EnhanceGraph, capture
from .onnx import ExportError, exporter_fingerprint, load_source, reserve_output

DEVICES = ("cpu", "cuda")
PRECISIONS = {p: reported_precision(p) for p in (FP32, FP16)}  # --precision -> what the package reports
DEFAULT_SIZES = "256x256"
DEFAULT_MAX_BATCH = 8
PADDING_RULE = (
    "static buckets: inputs image [N,3,Hp,Wp] (the H x W image at the top-left, the rest ignored) and size int64 [2] "
    "= (H, W); inside the program the image is flip-padded to Hp x Wp from size (the original test()'s padding, as "
    "a gather); output [N,3,Hp,Wp], the caller crops [:H, :W]. Dynamic program: padding and crop inside, as the "
    "ONNX graph."
)


# No C++ compiler: AOTInductor cannot build the package here.
CompilerMissing = MissingDependency


def find_compiler() -> str | None:
    """The host C++ compiler Inductor would use (CXX, else c++/g++/clang++ on PATH)."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'256x256,720p' -> [(256, 256), (720, 1280)] (contract.sizes); ExportError for anything else."""
    try:
        return contract_sizes.parse_sizes(text) if text.strip() else []
    except InputError as e:
        raise ExportError(f"--sizes: {e}") from None


def buckets_for(sizes, multiple: int = PAD_MULTIPLE) -> list[tuple[int, int]]:
    """The distinct padded sizes of ``sizes``, in order."""
    out = []
    for h, w in sizes:
        b = (padded_size(h, multiple), padded_size(w, multiple))
        if b not in out:
            out.append(b)
    return out


@contextlib.contextmanager
def padding_done_by_caller():
    """While tracing a bucket program: the network's own flip padding is skipped (the bucket program has already
    padded the image to the bucket size). It patches the one name ``codeenhance.network`` calls and restores it;
    the compiled program does not run Python, so nothing outside the trace is affected."""
    original = codeenhance.network.flip_pad_to_multiple

    def already_padded(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise AssertionError(f"bucket program: {tuple(x.shape)} is not padded to a multiple of {multiple}")
        return x

    codeenhance.network.flip_pad_to_multiple = already_padded
    try:
        yield
    finally:
        codeenhance.network.flip_pad_to_multiple = original


class BucketGraph(nn.Module):
    """(canvas [N,3,Hp,Wp], w_texture [N], w_style [N], size int64 [2]) -> (enhanced [N,3,Hp,Wp], codes int32)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.inner = graph  # not `graph`: the unlifted GraphModule has its own .graph

    def forward(self, image: torch.Tensor, w_texture: torch.Tensor, w_style: torch.Tensor, size: torch.Tensor):
        hp, wp = image.shape[-2:]
        # codeenhance.padding.symmetric_indices with the true size as a tensor: the same indices as the eager
        # padding of an H x W image to Hp x Wp, all < H (resp. W), so only the image part of the canvas is read.
        x = image.index_select(2, symmetric_indices(size[0], hp, image.device))
        x = x.index_select(3, symmetric_indices(size[1], wp, image.device))
        return self.inner(x, w_texture, w_style)


class Fp16Autocast(nn.Module):
    """Runs the wrapped graph under autocast(fp16) *inside* the traced code (an autocast around the call would not
    be captured); the islands inside turn it off again. Outputs: enhanced as float32, codes as they are."""

    def __init__(self, graph: nn.Module, device_type: str):
        super().__init__()
        self.inner, self.device_type = graph, device_type

    def forward(self, *args):
        with torch.autocast(self.device_type, dtype=torch.float16):
            enhanced, codes = self.inner(*args)
        return enhanced.float(), codes


def build_graph(model: CodeEnhance, *, device: str, precision: str) -> nn.Module:
    graph = EnhanceGraph(model, with_codes=True)
    if precision == "fp16":
        from codeenhance.islands import keep_fp32_islands  # the torch side of contract.graph.FP32_ISLANDS

        keep_fp32_islands(graph.net)
    return graph.to(device).eval()


def capture_bucket(graph: nn.Module, padded: tuple[int, int], *, max_batch: int, device: str,
                   precision: str) -> torch.export.ExportedProgram:
    """torch.export of BucketGraph(graph) at one padded size, batch dynamic in 1..max_batch (example batch 2:
    export specialises an example dimension of 1)."""
    hp, wp = padded
    module = BucketGraph(graph)
    if precision == "fp16":
        module = Fp16Autocast(module, device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    gen = torch.Generator().manual_seed(0)
    args = (torch.rand(2, 3, hp, wp, generator=gen).to(device), torch.ones(2, device=device),
            torch.ones(2, device=device), torch.tensor([hp - 7, wp - 5], dtype=torch.int64, device=device))
    shapes = ({0: batch}, {0: batch}, {0: batch}, None)
    with warnings.catch_warnings(), torch.no_grad(), padding_done_by_caller():
        warnings.simplefilter("ignore")
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def capture_dynamic(graph: nn.Module, *, device: str, precision: str) -> torch.export.ExportedProgram:
    """The ONNX export's program (export.graph.capture): dynamic N, H, W, padding and crop inside."""
    if device != "cpu" or precision != "fp32":
        module = Fp16Autocast(graph, device) if precision == "fp16" else graph
        from .graph import dynamic_shapes, example_inputs

        args = tuple(t.to(device) for t in example_inputs())
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            shapes = dynamic_shapes()
            return torch.export.export(module, args, dynamic_shapes=tuple(shapes[k] for k in INPUT_NAMES), strict=False,
                                       prefer_deferred_runtime_asserts_over_guards=True)
    return capture(graph)


def inductor_configs(device: str) -> dict:
    configs = {"aot_inductor.package": True}
    if device == "cpu":
        configs["freezing"] = True  # weights folded as constants (AOTI docs' CPU advice: TORCHINDUCTOR_FREEZING=1)
    return configs


@contextlib.contextmanager
def true_fp32(device: str):
    """TF32 off while compiling for CUDA: Inductor bakes the matmul/conv precision flags into the kernels."""
    if device != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compile_program(program: torch.export.ExportedProgram, device: str):
    """AOTInductor files for one program (the per-model half of aoti_compile_and_package)."""
    args, kwargs = program.example_inputs
    with true_fp32(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs,
                                           options=inductor_configs(device))


def built_for(device: str) -> tuple[Environment, dict]:
    """What a package compiled here runs on only, and the other facts of the compile worth recording."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return (Environment(torch_version=torch.__version__, device=device, gpu_name=torch.cuda.get_device_name(),
                            compute_capability=f"{major}.{minor}"), {"cuda_version": torch.version.cuda, "tf32": False})
    return Environment(torch_version=torch.__version__, device=device,
                       cpu_capability=torch.backends.cpu.get_cpu_capability()), {}


def check_options(device: str, precision: str, sizes, dynamic: bool, max_batch: int) -> None:
    if device not in DEVICES:
        raise ExportError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device != "cuda":
        raise ExportError("--precision fp16 needs --device cuda: CPU kernels in fp16 are emulated on most CPUs and "
                          "slower than fp32; build the CPU package in fp32")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError(f"--device cuda: this torch ({torch.__version__}) sees no usable CUDA GPU; the package is "
                          "compiled for the GPU it is built on, so build it on the target machine")
    if not sizes and not dynamic:
        raise ExportError("nothing to compile: give --sizes and/or --dynamic")
    if max_batch < 1:
        raise ExportError(f"--max-batch must be >= 1, got {max_batch}")
    if find_compiler() is None:
        raise CompilerMissing("no C++ compiler found (set CXX or install g++): AOTInductor compiles the kernels "
                              "and wrapper to a shared library")


def export_aoti(
    ckpt_or_model, out_path, *, device: str = "cpu", precision: str = "fp32", sizes=((256, 256),),
    dynamic: bool = False, max_batch: int = DEFAULT_MAX_BATCH, overwrite: bool = False, log=print,
) -> Path:
    """Compile and write the package atomically; returns its path. ExportError / CheckpointError on failure, and
    then nothing is left at ``out_path``."""
    check_options(device, precision, sizes, dynamic, max_batch)
    output = reserve_output(out_path, overwrite)
    with output as tmp:
        model, sha = load_source(ckpt_or_model)
        multiple = model.config.pad_multiple
        graph = build_graph(model, device=device, precision=precision)
        models, files, timings = {}, {}, {}
        work = [(bucket_name(b), b) for b in buckets_for(sizes, multiple)] + ([(DYNAMIC_MODEL, None)] if dynamic else [])
        for name, padded in work:
            start = time.perf_counter()
            if padded is None:
                program = capture_dynamic(graph, device=device, precision=precision)
            else:
                program = capture_bucket(graph, padded, max_batch=max_batch, device=device, precision=precision)
            exported = time.perf_counter()
            files[name] = compile_program(program, device)
            done = time.perf_counter()
            timings[name] = {"export_s": round(exported - start, 1), "compile_s": round(done - exported, 1)}
            models[name] = {"padded": list(padded) if padded else None}
            what = f"padded {padded[0]}x{padded[1]}" if padded else "dynamic N, H, W"
            log(f"{name}: {what}: export {exported - start:.1f} s, compile {done - exported:.1f} s")
        environment, facts = built_for(device)
        record = Provenance(kind=PACKAGE_KIND, checkpoint_sha256=sha, source_sha256=sha,
                            exporter_fingerprint=exporter_fingerprint(), model_config=model.config.to_dict(),
                            precision=PRECISIONS[precision], built_for=environment)
        meta = {
            "schema": PACKAGE_SCHEMA, **record.to_json(), **facts,
            "models": models, "max_batch": max_batch, META_PAD_MULTIPLE: multiple,
            "inputs": {"static": "image float32 [N,3,Hp,Wp], w_texture float32 [N], w_style float32 [N], size int64 [2]",
                       "dynamic": "image float32 [N,3,H,W], w_texture float32 [N], w_style float32 [N]"},
            "outputs": "enhanced float32 clamped to [0,1] ([N,3,Hp,Wp] static, [N,3,H,W] dynamic); codes int32 [N,1,Hp/4,Wp/4]",
            "padding": PADDING_RULE,
            "inductor_configs": inductor_configs(device),
            "compile_seconds": timings,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        # package_pt2 wants a name ending in .pt2: write beside the reserved temp file, then move it over.
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".aoti.") as scratch:
            staged = Path(scratch) / "model.pt2"
            from torch.export.pt2_archive._package import package_pt2

            package_pt2(str(staged), aoti_files=files, extra_files={META_NAME: format_sidecar(meta) + "\n"})
            seal_zip(staged, facts=META_NAME)
            os.replace(staged, tmp)
    return output.path


def parse_args(argv):
    p = common.parser("python -m export.aoti", __doc__)
    common.add_checkpoint(p)
    common.add_output(p, help="the .pt2 package to write", overwrite_help="replace an existing output file")
    common.add_device(p, default="cpu", choices=DEVICES, help="device the kernels are compiled for (default cpu)")
    common.add_precision(p, default="fp32", choices=tuple(PRECISIONS),
                         help="fp32 (default) or fp16 with FP32 islands (CUDA only)")
    common.add_sizes(p, parse=False,
                   help=f"image sizes HxW[,HxW...] (720p, 1080p too); each gives the static bucket of its padded size "
                        f"(default {DEFAULT_SIZES} unless --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="also compile one program with dynamic N, H, W (slow to compile)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help=f"largest batch of the buckets (default {DEFAULT_MAX_BATCH})")
    return p.parse_args(argv)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes if args.sizes is not None else ("" if args.dynamic else DEFAULT_SIZES))
        start = time.perf_counter()
        out = export_aoti(args.ckpt, args.out, device=args.device, precision=args.precision, sizes=sizes,
                          dynamic=args.dynamic, max_batch=args.max_batch, overwrite=args.overwrite)
    except (ExportError, MissingDependency) as e:
        raise e.also(f"nothing was written to {args.out}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.device}, {args.precision}) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
