"""What a CodeEnhance TensorRT build will do, decided before TensorRT is touched.

A :class:`BuildPlan` holds the checked ONNX graph, the shape profile, the builder flags, the engine
path and its key. It is made the same way for a real build, a ``--dry-run`` and ``--print-trtexec``,
so what the dry run prints is what the build does. Nothing here imports TensorRT.

Engine naming (after vs-mlrt's ``get_engine_path``): an engine is valid only for one profile, builder
flag set, TensorRT version, GPU model and ONNX file, so all of them go into its key::

    <onnx stem>.b<min>-<opt>-<max>_<minHxW>-<optHxW>-<maxHxW>_o<level>_ws<GiB>g_trt<version>_<gpu>_<sha256[:8]>.plan

A stale engine then simply has another name and is never picked up. ``--out`` may be a folder (the
keyed name goes inside), a name containing ``{key}``, or a path ending in ``.plan``/``.engine``, used
as is; the key is always recorded in the sidecar.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from contract.files import update_digest

from contract.engine_sidecar import SIDECAR_SCHEMA, GpuInfo
from contract.errors import InputError
from contract.integrity import check_onnx
from contract.provenance import Environment, Kind, Provenance, onnx_record
from contract.sizes import parse_size
from contract.graph import (  # noqa: F401  (INPUT_NAMES, OUTPUT_ENHANCED: this module's names for the builder)
    BF16, FP16, INPUT_IMAGE, INPUT_NAMES, INPUT_RANKS, OUTPUT_ENHANCED, WEIGHT_NAMES, check_io,
    mixed_precision,
)

ENGINE_SUFFIXES = (".plan", ".engine")
KEY_PLACEHOLDER = "{key}"
UNKNOWN = "unknown"

_ONNX_TYPE_NAMES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}


# A build request that cannot work, with what to change: a bad input.
PlanError = InputError


def parse_hw(text: str) -> tuple[int, int]:
    """``"512x768"`` -> (512, 768) as (H, W); ``"512"`` -> (512, 512); ``"720p"``; PlanError otherwise."""
    try:
        return parse_size(text)
    except InputError as e:
        raise PlanError(str(e)) from None


def format_shape(shape) -> str:
    """(1, 3, 64, 64) -> "1x3x64x64", the notation of trtexec's --minShapes and of --min/--opt/--max."""
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class ShapeProfile:
    """The one optimization profile: batch N and image H, W ranges shared by all three inputs."""

    min_hw: tuple[int, int] = (64, 64)
    opt_hw: tuple[int, int] = (512, 512)
    max_hw: tuple[int, int] = (1024, 1024)
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1

    def validate(self) -> None:
        axes = {
            "batch": (self.min_batch, self.opt_batch, self.max_batch),
            "height": (self.min_hw[0], self.opt_hw[0], self.max_hw[0]),
            "width": (self.min_hw[1], self.opt_hw[1], self.max_hw[1]),
        }
        problems = []
        for axis, (lo, mid, hi) in axes.items():
            if lo < 1:
                problems.append(f"the minimum {axis} must be at least 1, got {lo}")
            if not lo <= mid <= hi:
                problems.append(f"{axis} must satisfy min <= opt <= max, got {lo} / {mid} / {hi}")
        if problems:
            raise PlanError("invalid shape profile: " + "; ".join(problems))

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per input name: (min, opt, max) shapes, as IOptimizationProfile.set_shape takes them."""
        batches = (self.min_batch, self.opt_batch, self.max_batch)
        hws = (self.min_hw, self.opt_hw, self.max_hw)
        image = tuple((n, 3, h, w) for n, (h, w) in zip(batches, hws))
        weight = tuple((n,) for n in batches)
        return {INPUT_IMAGE: image, **{name: weight for name in WEIGHT_NAMES}}

    def tag(self) -> str:
        hw = "-".join(map(format_shape, (self.min_hw, self.opt_hw, self.max_hw)))
        return f"b{self.min_batch}-{self.opt_batch}-{self.max_batch}_{hw}"

    def as_dict(self) -> dict:
        return {name: dict(zip(("min", "opt", "max"), map(list, s))) for name, s in self.shapes().items()}


@dataclass(frozen=True)
class BuildFlags:
    """Builder settings that change the engine (hence part of its key)."""

    workspace_gib: float = 4.0
    opt_level: int = 3  # TensorRT's default builder optimization level
    strongly_typed: bool = True  # always: the FP16 graph carries its precision; TensorRT 11 has no other mode

    def validate(self) -> None:
        if not self.workspace_gib > 0:
            raise PlanError(f"--workspace must be positive (GiB), got {self.workspace_gib}")
        if not 0 <= self.opt_level <= 5:
            raise PlanError(f"--opt-level must be 0..5, got {self.opt_level}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    @property
    def workspace_mib(self) -> int:
        return int(self.workspace_gib * 1024)

    def tag(self) -> str:
        return f"o{self.opt_level}_ws{self.workspace_gib:g}g"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32", "int32", ...
    dims: tuple[int | str | None, ...] | None  # int: fixed; str: symbolic; None: unknown; dims None: unknown rank

    def describe(self) -> str:
        dims = "?" if self.dims is None else ",".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.name} {self.dtype} [{dims}]"


@dataclass(frozen=True)
class OnnxSummary:
    path: Path
    sha256: str  # of the .onnx file and any external data files it references
    opset: int | None
    precision: str  # reported vocabulary (contract.graph): fp32, or fp16-mixed when weights or Casts are FP16
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    record: Provenance  # the graph's provenance record (empty for a graph from another tool)


def inspect_onnx(path: str | Path) -> OnnxSummary:
    """Read the graph's I/O signature and fingerprint without loading external weights."""
    path = Path(path).resolve()
    if not path.is_file():
        raise PlanError(f"ONNX file not found: {path}")
    import onnx
    from onnx.external_data_helper import uses_external_data

    from .check import onnx_opset  # here, like onnx: this module stays importable without it

    try:
        model = onnx.load(str(path), load_external_data=False)
        check_onnx(model, path)
    except Exception as exc:  # protobuf raises several unrelated types for a corrupt file
        raise PlanError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.input or not model.graph.output:
        raise PlanError(f"{path} is not a usable ONNX model: its graph has no inputs or no outputs")
    weights = {t.name for t in model.graph.initializer}  # old exporters also list initializers as inputs
    external = sorted(
        {e.value for t in model.graph.initializer if uses_external_data(t) for e in t.external_data if e.key == "location"}
    )
    opset = onnx_opset(model)
    record = onnx_record(model)
    return OnnxSummary(
        path=path,
        sha256=_fingerprint(path, external),
        opset=opset,
        precision=record.precision or _graph_precision(model),
        inputs={v.name: _tensor_spec(v) for v in model.graph.input if v.name not in weights},
        outputs={v.name: _tensor_spec(v) for v in model.graph.output},
        record=record,
    )


def _tensor_spec(value_info) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    dtype = _ONNX_TYPE_NAMES.get(tensor_type.elem_type, f"onnx-type-{tensor_type.elem_type}")
    if not tensor_type.HasField("shape"):
        return TensorSpec(value_info.name, dtype, None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, dtype, dims)


def _graph_precision(model) -> str:
    """The precision of a graph whose provenance record names none (one from another tool), from what its
    initializers and Casts hold: a strongly typed engine runs in the graph's own types."""
    reduced = {10: FP16, 16: BF16}  # TensorProto.FLOAT16, BFLOAT16
    found = {reduced[t.data_type] for t in model.graph.initializer if t.data_type in reduced}
    casts = (a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to")
    found |= {reduced[to] for to in casts if to in reduced}
    return mixed_precision(found)


def _fingerprint(path: Path, external_files: list[str]) -> str:
    """sha256 of the model file (what ``sha256sum`` prints), extended by each external data file's name and
    bytes when there are any: retrained weights must change the key even when they live outside the .onnx."""
    digest = hashlib.sha256()
    update_digest(digest, path)
    for name in external_files:
        file = path.parent / name
        if not file.is_file():
            raise PlanError(f"{path} references external data {name}, which is missing next to it")
        digest.update(name.encode() + b"\0")
        update_digest(digest, file)
    return digest.hexdigest()


def check_contract(summary: OnnxSummary, profile: ShapeProfile) -> None:
    """Raise PlanError listing every way the graph's I/O disagrees with the contract (contract.graph.check_io: names,
    FP32 I/O, ranks; no inputs beyond the contract's, which the profile covers) or with the profile."""
    problems = []
    for name, (mins, opts, maxs) in profile.shapes().items():
        spec = summary.inputs.get(name)
        if spec is None or spec.dims is None or len(spec.dims) != INPUT_RANKS[name]:
            continue  # check_io names it
        for axis, fixed in enumerate(spec.dims):
            # TensorRT requires min == opt == max == the fixed size on static dimensions.
            if isinstance(fixed, int) and fixed > 0 and not mins[axis] == opts[axis] == maxs[axis] == fixed:
                problems.append(
                    f"input {name} has fixed size {fixed} on axis {axis} but the profile asks for "
                    f"{mins[axis]}..{maxs[axis]}; export with dynamic axes or match the profile to it"
                )
    check_io(summary.inputs, summary.outputs, where=summary.path.name, error=PlanError, extra_inputs=False,
             dtypes={n: s.dtype for n, s in summary.inputs.items()},
             ranks={n: None if s.dims is None else len(s.dims) for n, s in summary.inputs.items()},
             problems=problems, fix="export it with python -m export.onnx (the FP16 graph keeps FP32 I/O)")


def _slug(text: str) -> str:
    """File-name-safe form of a version or GPU name: "NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3"."""
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-") or UNKNOWN


def engine_key(
    profile: ShapeProfile, trt_version: str, gpu_name: str, onnx_sha256: str, flags: BuildFlags = BuildFlags()
) -> str:
    """Everything an engine is only valid for, as one file-name-safe string."""
    return f"{profile.tag()}_{flags.tag()}_trt{_slug(trt_version)}_{_slug(gpu_name)}_{onnx_sha256[:8]}"


def resolve_engine_path(out: str | Path | None, onnx_path: Path, key: str) -> Path:
    """Where the engine goes: see the module docstring for the rules on ``--out``."""
    keyed_name = f"{onnx_path.stem}.{key}.plan"
    if out is None:
        return onnx_path.parent / keyed_name
    out = str(out)
    if KEY_PLACEHOLDER in out:
        return Path(out.replace(KEY_PLACEHOLDER, key))
    if Path(out).suffix in ENGINE_SUFFIXES:
        return Path(out)
    return Path(out) / keyed_name  # a folder, existing or not


def default_engine_path(
    onnx: str | Path,
    profile: ShapeProfile,
    trt_version: str,
    gpu: str | GpuInfo,
    *,
    flags: BuildFlags = BuildFlags(),
    onnx_sha256: str | None = None,
    folder: str | Path | None = None,
) -> Path:
    """The keyed engine path for an ONNX file: next to it, or inside ``folder``.

    The runtime can call this to find the engine matching its TensorRT version and GPU.
    """
    onnx = Path(onnx).resolve()
    sha = onnx_sha256 or inspect_onnx(onnx).sha256
    gpu_name = gpu.name if isinstance(gpu, GpuInfo) else gpu
    return resolve_engine_path(folder, onnx, engine_key(profile, trt_version, gpu_name, sha, flags))


def trt_major(trt_version: str | None) -> int | None:
    try:
        return int(str(trt_version).split(".")[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class BuildPlan:
    onnx: OnnxSummary
    profile: ShapeProfile
    flags: BuildFlags
    trt_version: str  # tensorrt.__version__, or what --trt-version says when planning without TensorRT
    gpu: GpuInfo | None  # None only when planning on a machine without a GPU
    engine_path: Path
    key: str
    timing_cache: Path | None = None

    @classmethod
    def create(
        cls,
        onnx_path: str | Path,
        profile: ShapeProfile = ShapeProfile(),
        flags: BuildFlags = BuildFlags(),
        *,
        trt_version: str = UNKNOWN,
        gpu: GpuInfo | None = None,
        out: str | Path | None = None,
        timing_cache: str | Path | None = None,
    ) -> BuildPlan:
        profile.validate()
        flags.validate()
        summary = inspect_onnx(onnx_path)
        check_contract(summary, profile)
        key = engine_key(profile, trt_version, gpu.name if gpu else UNKNOWN, summary.sha256, flags)
        return cls(
            onnx=summary,
            profile=profile,
            flags=flags,
            trt_version=trt_version,
            gpu=gpu,
            engine_path=resolve_engine_path(out, summary.path, key).resolve(),
            key=key,
            timing_cache=Path(timing_cache).resolve() if timing_cache else None,
        )

    def sidecar(self, created: datetime | None = None) -> dict:
        """The sidecar JSON for the engine this plan builds (field names: see contract/engine_sidecar.py)."""
        created = created or datetime.now(timezone.utc)
        record = Provenance(
            kind=Kind.ENGINE, checkpoint_sha256=self.onnx.record.checkpoint_sha256, source_sha256=self.onnx.sha256,
            exporter_fingerprint=self.onnx.record.exporter_fingerprint, model_config=self.onnx.record.model_config,
            precision=self.onnx.precision, shapes=self.profile.as_dict(),
            built_for=Environment(tensorrt_version=self.trt_version, gpu_name=self.gpu and self.gpu.name,
                                  compute_capability=self.gpu and self.gpu.compute_capability))
        return {
            "schema": SIDECAR_SCHEMA,
            "key": self.key,
            **record.to_json(),
            "io": {"inputs": list(self.onnx.inputs), "outputs": list(self.onnx.outputs)},
            "onnx": {"path": str(self.onnx.path), "opset": self.onnx.opset},
            "build": {
                "strongly_typed": self.flags.strongly_typed,
                "workspace_gib": self.flags.workspace_gib,
                "builder_optimization_level": self.flags.opt_level,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            },
            "created": created.isoformat(timespec="seconds"),
        }

    def trtexec_command(self, major: int) -> list[str]:
        """The trtexec equivalent of this build for TensorRT ``major`` (10 or 11).

        No ``--fp16``: the graph carries its precision, and 11.x rejects the flag. ``--stronglyTyped``
        is opt-in on 10.x and a deprecated no-op on 11.x, so it is passed on 10.x only.
        """
        shapes = self.profile.shapes()
        cmd = ["trtexec", f"--onnx={self.onnx.path}", f"--saveEngine={self.engine_path}"]
        for index, option in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            spec = ",".join(f"{name}:{format_shape(s[index])}" for name, s in shapes.items())
            cmd.append(f"{option}={spec}")
        cmd += [f"--memPoolSize=workspace:{self.flags.workspace_mib}M", f"--builderOptimizationLevel={self.flags.opt_level}"]
        if self.timing_cache:
            cmd.append(f"--timingCacheFile={self.timing_cache}")
        if major < 11:
            cmd.append("--stronglyTyped")
        cmd.append("--skipInference")
        return cmd

    def polygraphy_compare_command(self, major: int) -> list[str]:
        """``polygraphy run`` comparing a TensorRT build with this plan's settings against ONNX Runtime on the same
        graph (random inputs at the opt shape). ``--tf32``: Polygraphy clears TF32, TensorRT and trtexec keep it on.
        ``--strongly-typed`` on 10.x only, like ``--stronglyTyped`` for trtexec."""
        shapes = self.profile.shapes()
        cmd = ["polygraphy", "run", str(self.onnx.path), "--trt", "--onnxrt"]
        options = (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2), ("--input-shapes", 1))
        for option, index in options:
            cmd += [option, *(f"{name}:[{','.join(map(str, s[index]))}]" for name, s in shapes.items())]
        cmd += ["--tf32", "--pool-limit", f"workspace:{self.flags.workspace_mib}M",
                "--builder-optimization-level", str(self.flags.opt_level)]
        if major < 11:
            cmd.append("--strongly-typed")
        return cmd

    def polygraphy_compare_text(self, major: int | None = None) -> str:
        lines = []
        for m in [major] if major else [10, 11]:
            lines += [f"# TensorRT {'10.x' if m < 11 else '11.x'}", shlex.join(self.polygraphy_compare_command(m))]
        lines.append("# It builds its own engine in memory. Polygraphy's default tolerances (1e-5) are FP32-strict: "
                     "pass --atol/--rtol for an FP16 graph.")
        return "\n".join(lines)

    def trtexec_text(self, major: int | None = None) -> str:
        """Shell lines for one TensorRT major version, or for both 10.x and 11.x when it is unknown."""
        majors = [major] if major else [10, 11]
        lines = []
        for m in majors:
            label = "TensorRT 10.x (10.12 or later)" if m < 11 else "TensorRT 11.x"
            lines += [f"# {label}", shlex.join(self.trtexec_command(m))]
        lines.append(
            f"# The engine keeps the ONNX I/O names ({', '.join(INPUT_NAMES)} -> {', '.join(self.onnx.outputs)}), "
            "which the runtime binds by name. trtexec writes no .json sidecar."
        )
        return "\n".join(lines)
