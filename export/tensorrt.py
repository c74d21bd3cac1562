"""Build a CodeEnhance TensorRT engine from its ONNX graph (TensorRT 10.12+ and 11.x).

    python -m export.tensorrt model_fp16.onnx [--out model.plan] [--min 64x64 --opt 512x512 --max 1024x1024]
        [--min-batch 1 --opt-batch 1 --max-batch 1] [--workspace 4] [--opt-level 3] [--timing-cache trt.cache]
        [--dry-run] [--print-trtexec] [--trt-version 10.16] [--gpu-name NAME] [--overwrite] [--verbose]

The TensorRT calls are Polygraphy's loaders (NVIDIA's tested wrapper); this module adds what they do not do.
The network is strongly typed: precision comes from the graph (the FP16 graph of export/precision.py
casts inside and keeps FP32 I/O), never from ``BuilderFlag.FP16``, which TensorRT 11 removed. One
optimization profile covers ``image`` [N,3,H,W] and ``w_texture``/``w_style`` [N]. Next to the engine a
sidecar ``<engine>.json`` records the TensorRT version, GPU and ONNX hash (contract/engine_sidecar.py);
the engine name carries the same facts as a key (export/trt_plan.py), so stale engines are never reused.

``--dry-run`` and ``--print-trtexec`` work without TensorRT or a GPU: they check the ONNX file and
print the plan. A dry run exits 0 exactly when a real build would get as far as TensorRT.
Exit status: 0 done, 1 TensorRT failed to parse or build, 2 bad arguments or ONNX file,
3 TensorRT or a GPU is missing. TensorRT is imported only on the build path.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from contract import cli as common
from contract import optional
from contract.errors import EXIT_NO_TENSORRT, EXIT_OK, BackendError, ToolkitError
from contract.engine_sidecar import (
    GpuInfo,
    StaleEngineError,
    check_sidecar,
    detect_gpu,
    format_sidecar,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from contract.files import file_sha256, write_bytes_atomically
from contract.integrity import PAYLOAD_KEY
from contract.graph import check_io

if TYPE_CHECKING:  # annotations only (also what tests/trt_api.py reads to check these calls)
    import tensorrt as trt

from .trt_plan import (
    UNKNOWN,
    BuildFlags,
    BuildPlan,
    PlanError,
    ShapeProfile,
    default_engine_path,
    engine_key,
    format_shape,
    trt_major,
)

__all__ = [
    "BuildFlags",
    "BuildPlan",
    "EngineBuildError",
    "EngineBuilder",
    "PlanError",
    "ShapeProfile",
    "StaleEngineError",
    "TensorRTMissingError",
    "check_sidecar",
    "default_engine_path",
    "engine_key",
    "main",
    "read_sidecar",
    "sidecar_path",
]

WITHOUT_TENSORRT = "or run with --dry-run / --print-trtexec to see the build plan without it"


class TensorRTMissingError(optional.MissingDependency):
    """TensorRT (or a GPU to build on) is not available here."""

    exit_code = EXIT_NO_TENSORRT


# TensorRT rejected the graph or failed to build, with its reasons: a backend failure (exit 1).
EngineBuildError = BackendError


def import_tensorrt():
    try:
        return optional.import_tensorrt()
    except optional.MissingDependency as e:
        raise TensorRTMissingError(f"{e}; {WITHOUT_TENSORRT}") from e


def import_polygraphy():
    """``polygraphy.backend.trt``: NVIDIA's TensorRT loaders (pure Python; TensorRT is imported when one runs)."""
    try:
        return optional.import_polygraphy_trt()
    except optional.MissingDependency as e:
        raise TensorRTMissingError(f"{e}; {WITHOUT_TENSORRT}") from e


def strongly_typed(trt) -> bool:
    """Whether to ask for the STRONGLY_TYPED network flag: the opt-in on 10.x (Polygraphy fails clearly where the
    enum lacks it); 11.x networks are always strongly typed and the flag is a deprecated no-op, so it is left out."""
    major = trt_major(trt.__version__)
    return major is None or major < 11


def polygraphy_profile(profile: ShapeProfile):
    """Our one optimization profile as a Polygraphy ``Profile``: (min, opt, max) per input name."""
    from polygraphy.backend.trt import Profile

    result = Profile()
    for name, (smallest, optimal, largest) in profile.shapes().items():
        result.add(name, min=smallest, opt=optimal, max=largest)
    return result


def loader_arguments(plan: BuildPlan, trt) -> dict[str, dict]:
    """Keyword arguments of each Polygraphy loader of the build, by class name (tests bind them to the signatures).

    No ``load_timing_cache``/``save_timing_cache``: Polygraphy merges a cache from another GPU into the new one
    (``combine(..., ignore_mismatch=True)``) and writes it in place; EngineBuilder keeps our rules instead.
    ``tf32=True``: TensorRT's and trtexec's default, which Polygraphy's CreateConfig would otherwise clear.
    ``LAYER_NAMES_ONLY``: trtexec's default profiling verbosity (Polygraphy's is DETAILED), so that the engine
    matches the trtexec line of the plan.
    """
    flags = plan.flags
    return {
        "NetworkFromOnnxPath": {"path": str(plan.onnx.path), "strongly_typed": strongly_typed(trt)},
        "CreateConfig": {
            "tf32": True,
            "profiles": [polygraphy_profile(plan.profile)],
            "memory_pool_limits": {trt.MemoryPoolType.WORKSPACE: flags.workspace_bytes},
            "builder_optimization_level": flags.opt_level,
            "profiling_verbosity": trt.ProfilingVerbosity.LAYER_NAMES_ONLY,
        },
    }


@contextmanager
def polygraphy_errors():
    """Collect what Polygraphy logs as errors while its loaders run (they are still printed): each ONNX parser
    error (``str(IParserError)``: node, name, operator, reason), which it logs one by one before raising
    PolygraphyException, and TensorRT's own ERROR lines, which its TensorRT logger forwards to ``G_LOGGER.error``."""
    from polygraphy.logger import G_LOGGER

    errors, log_error = [], G_LOGGER.error

    def collect(message, *args, **kwargs):
        errors.append(str(message() if callable(message) else message).strip())
        return log_error(message, *args, **kwargs)

    G_LOGGER.error = collect
    try:
        yield errors
    finally:
        del G_LOGGER.error  # back to the class's method


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    engine_bytes: int
    seconds: float


class EngineBuilder:
    """Turns a BuildPlan into an engine file, its sidecar and an updated timing cache.

    Polygraphy's loaders do the TensorRT calls: NetworkFromOnnxPath (parse_from_file, so external weights are
    found; strongly typed), CreateConfig (profile, workspace, optimization level), EngineBytesFromNetwork. Ours,
    hooked in with PostprocessNetwork/PostprocessConfig: the check that the network keeps our I/O names, the timing
    cache rules, and around the build the error messages with TensorRT's reasons, the atomic write and the sidecar.
    """

    def __init__(self, plan: BuildPlan, *, verbose: bool = False, log=print):
        self.plan = plan
        self.trt = import_tensorrt()
        self.polygraphy = import_polygraphy()
        self.verbose, self.log = verbose, log
        self.parsed = False  # set once the ONNX parser succeeded, to tell parse errors from build errors
        self.config = None  # the IBuilderConfig, once Polygraphy made it: its timing cache is saved after the build
        self.timing_cache = None

    def loader(self):
        """The build as one Polygraphy loader; calling it parses, configures and returns the serialized engine."""
        pg, kwargs = self.polygraphy, loader_arguments(self.plan, self.trt)
        network = pg.PostprocessNetwork(pg.NetworkFromOnnxPath(**kwargs["NetworkFromOnnxPath"]),
                                        func=self._check_network, name="check CodeEnhance I/O names")
        config = pg.PostprocessConfig(pg.CreateConfig(**kwargs["CreateConfig"]), func=self._configure)
        return pg.EngineBytesFromNetwork(network, config=config)

    def build(self) -> BuildResult:
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER

        start = time.perf_counter()
        build_engine = self.loader()
        self.log(f"building {self.plan.engine_path.name} (this can take minutes) ...")
        with G_LOGGER.verbosity(G_LOGGER.EXTRA_VERBOSE if self.verbose else G_LOGGER.INFO), polygraphy_errors() as errors:
            try:
                serialized = build_engine()
            except ToolkitError:
                raise
            except (PolygraphyException, RuntimeError, ValueError) as exc:  # RuntimeError, ValueError: from TensorRT
                raise EngineBuildError(self._failure(exc, errors)) from exc
        engine = self.plan.engine_path
        sidecar_path(engine).unlink(missing_ok=True)  # an old sidecar must never describe the new engine
        write_bytes_atomically(engine, serialized)
        self._save_timing_cache()
        sidecar = write_sidecar(engine, {**self.plan.sidecar(), PAYLOAD_KEY: file_sha256(engine)})
        return BuildResult(engine, sidecar, engine.stat().st_size, time.perf_counter() - start)

    def _failure(self, exc: Exception, errors: list[str]) -> str:
        name = self.plan.onnx.path.name
        reasons = "\n  ".join(errors or [f"{type(exc).__name__}: {exc}"])
        if not self.parsed:
            return f"TensorRT's ONNX parser rejected {name}:\n  {reasons}"
        if self.config is None:
            return f"TensorRT rejected the build configuration of {name}:\n  {reasons}"
        return (
            f"TensorRT could not build an engine from {name}:\n  {reasons}\nCommon causes: the workspace is too small "
            "(--workspace), the --max shape does not fit in GPU memory, or an operator is unsupported at this shape range."
        )

    def _check_network(self, network: trt.INetworkDefinition) -> None:
        self.parsed = True
        inputs = sorted({network.get_input(i).name for i in range(network.num_inputs)})
        outputs = sorted({network.get_output(i).name for i in range(network.num_outputs)})
        check_io(inputs, outputs, where="the parsed network", verdict="lacks {missing}", error=EngineBuildError,
                 fix="the runtime binds tensors by these names")

    def _configure(self, builder, network, config: trt.IBuilderConfig) -> None:
        """After CreateConfig: check the profile (Polygraphy ignores add_optimization_profile's result), then read
        the timing cache file if there is one. Without one, CreateConfig's empty cache is used and not kept."""
        self.config, path = config, self.plan.timing_cache
        if config.num_optimization_profiles != 1:
            raise EngineBuildError("TensorRT rejected the optimization profile: " + json.dumps(self.plan.profile.as_dict()))
        if path is None:
            return
        data = path.read_bytes() if path.is_file() else b""
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError):  # a corrupt file; handled like a foreign one below
            cache = None
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            # A cache from another GPU or TensorRT version is refused; timings from elsewhere would mislead.
            self.log(f"warning: timing cache {path} does not fit this GPU/TensorRT; starting a new one in its place")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        self.timing_cache = cache  # must outlive the build, per TensorRT's docs

    def _save_timing_cache(self) -> None:
        if self.plan.timing_cache is None or self.config is None:
            return
        cache = self.config.get_timing_cache()
        if cache is not None:
            write_bytes_atomically(self.plan.timing_cache, cache.serialize())


def describe_plan(plan: BuildPlan, tensorrt_installed: bool) -> str:
    """Human-readable plan for --dry-run: what would be built, where, and with which facts in the sidecar."""
    onnx = plan.onnx
    shapes = plan.profile.shapes()
    width = max(map(len, shapes))
    profile_lines = [
        f"{name:<{width}}  " + "  ".join(f"{label} {format_shape(s)}" for label, s in zip(("min", "opt", "max"), minoptmax))
        for name, minoptmax in shapes.items()
    ]
    flags = plan.flags
    trt_note = "" if tensorrt_installed else "  (TensorRT is not installed here: from --trt-version, else unknown)"
    gpu = "none detected (pass --gpu-name)"
    if plan.gpu:
        gpu = f"{plan.gpu.name} (compute capability {plan.gpu.compute_capability})"
    rows = [
        ("onnx", f"{onnx.path}  sha256 {onnx.sha256[:16]}...  opset {onnx.opset}  precision {onnx.precision}"),
        ("inputs", ", ".join(s.describe() for s in onnx.inputs.values())),
        ("outputs", ", ".join(s.describe() for s in onnx.outputs.values())),
        ("profile", ("\n" + " " * 12).join(profile_lines)),
        (
            "flags",
            f"strongly typed, workspace {flags.workspace_gib:g} GiB, builder optimization level {flags.opt_level}, "
            f"timing cache {plan.timing_cache or 'none'}",
        ),
        ("tensorrt", plan.trt_version + trt_note),
        ("gpu", gpu),
        ("key", plan.key),
        ("engine", str(plan.engine_path)),
        ("sidecar", str(sidecar_path(plan.engine_path))),
    ]
    lines = ["CodeEnhance TensorRT build plan (dry run: nothing is built)"]
    lines += [f"  {label:<9} {value}" for label, value in rows]
    lines += ["sidecar content:", format_sidecar(plan.sidecar()), "trtexec equivalent:"]
    lines.append(plan.trtexec_text(trt_major(plan.trt_version)))
    lines += ["compare with ONNX Runtime (polygraphy):", plan.polygraphy_compare_text(trt_major(plan.trt_version))]
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "python -m export.tensorrt",
        description="Build a strongly typed CodeEnhance TensorRT engine (plus a JSON sidecar) from its ONNX graph.",
        epilog="exit status: 0 done, 1 TensorRT parse/build failed, 2 bad arguments or ONNX, 3 no TensorRT or GPU",
    )
    p.add_argument("onnx", type=Path, help="ONNX graph with inputs image, w_texture, w_style (FP16: export/precision.py)")
    common.add_output(p, required=False, overwrite_help="replace an existing engine file",
                      help="engine file (.plan/.engine), a folder, or a name with {key} (default: keyed name next to the ONNX)")
    common.add_sizes(p, flag="--min", many=False, default="64x64", help="smallest image HxW (default 64x64)")
    common.add_sizes(p, flag="--opt", many=False, default="512x512", help="image HxW to tune for (default 512x512)")
    common.add_sizes(p, flag="--max", many=False, default="1024x1024", help="largest image HxW (default 1024x1024)")
    p.add_argument("--min-batch", type=common.positive_int, default=1, metavar="N")
    p.add_argument("--opt-batch", type=common.positive_int, default=1, metavar="N")
    p.add_argument("--max-batch", type=common.positive_int, default=1, metavar="N")
    p.add_argument("--workspace", type=common.positive_float, default=4.0, metavar="GiB", help="builder workspace limit in GiB (default 4)")
    p.add_argument("--opt-level", type=common.int_in(0, 5), default=3, metavar="0-5", help="builder optimization level 0-5 (default 3)")
    p.add_argument("--timing-cache", type=common.file_path("timing cache file"), metavar="PATH",
                   help="timing cache file, read if present and rewritten after the build")
    p.add_argument("--dry-run", action="store_true", help="check the ONNX file and print the plan; build nothing")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command; build nothing")
    p.add_argument("--trt-version", type=common.version, metavar="X.Y", help="TensorRT version to plan for when it is not installed here (e.g. 10.16.0 or 11)")
    p.add_argument("--gpu-name", metavar="NAME", help="GPU name to plan for when none is visible here (e.g. 'NVIDIA H100 80GB HBM3')")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose logging")
    return p


def _installed_trt_version() -> str | None:
    try:
        return import_tensorrt().__version__
    except TensorRTMissingError:
        return None


def _target(args, installed: str | None, planning: bool) -> tuple[str, GpuInfo | None]:
    """TensorRT version and GPU the engine is for: detected ones, or --trt-version/--gpu-name when planning."""
    if planning:
        gpu = GpuInfo(args.gpu_name, UNKNOWN) if args.gpu_name else detect_gpu()
        return args.trt_version or installed or UNKNOWN, gpu
    if installed is None:
        raise TensorRTMissingError(f"TensorRT is not installed; install it with {optional.TENSORRT_HINT}, {WITHOUT_TENSORRT}")
    detected_gpu = detect_gpu()
    if detected_gpu is None:
        raise TensorRTMissingError("no CUDA GPU is visible; engines must be built on the GPU model that will run them")
    for option, given, actual in (("--trt-version", args.trt_version, installed), ("--gpu-name", args.gpu_name, detected_gpu.name)):
        if given and not actual.startswith(given):
            raise PlanError(f"{option} {given!r} disagrees with this machine ({actual!r}); a build targets this machine")
    return installed, detected_gpu


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    planning = args.dry_run or args.print_trtexec
    installed = _installed_trt_version()
    trt_version, gpu = _target(args, installed, planning)
    profile = ShapeProfile(args.min, args.opt, args.max, args.min_batch, args.opt_batch, args.max_batch)
    flags = BuildFlags(workspace_gib=args.workspace, opt_level=args.opt_level)
    plan = BuildPlan.create(
        args.onnx, profile, flags, trt_version=trt_version, gpu=gpu, out=args.out, timing_cache=args.timing_cache
    )
    if args.print_trtexec and not args.dry_run:
        print(plan.trtexec_text(trt_major(trt_version)))
        return EXIT_OK
    if plan.engine_path.exists() and not args.overwrite:
        same_key = " (same key: same ONNX, shapes, flags, TensorRT and GPU)" if plan.key in plan.engine_path.name else ""
        raise PlanError(f"{plan.engine_path} already exists{same_key}; pass --overwrite to rebuild it")
    if args.dry_run:
        print(describe_plan(plan, installed is not None))
        return EXIT_OK
    result = EngineBuilder(plan, verbose=args.verbose).build()
    print(
        f"built {result.engine_path} ({result.engine_bytes / 2**20:.1f} MiB) in {result.seconds:.0f} s; "
        f"sidecar {result.sidecar_path}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
