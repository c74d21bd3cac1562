"""One provenance record for every artifact the toolkit writes, one writer/reader per carrier, one staleness check.

The record (``Provenance``) says where an artifact comes from and what it runs on:

- ``kind``: what the artifact is (``Kind``);
- ``toolkit_version``: this toolkit's version when it was written;
- ``checkpoint_sha256``: the checkpoint its weights come from (carried along: an engine built from a graph records
  the graph's checkpoint);
- ``source_sha256``: the file it was made from directly (the checkpoint for a graph or a package, the graph for an
  engine, an IR or a served model);
- ``exporter_fingerprint``: the code and tool versions that shaped it (an upgraded toolkit makes a different artifact
  from the same source);
- ``model_config``, ``precision`` (the reported vocabulary of ``contract.graph``), ``shapes`` (a build profile);
- ``payload_sha256``: the content hash of what computes (``contract.integrity`` checks it at load);
- ``built_for``: the facts of the machine or library it runs on only (``Environment``: torch version, device, CPU
  capability, TensorRT version, GPU name, compute capability).

Field names are the same in every carrier, each at the top level:

- string maps (ONNX ``metadata_props``, the ``codeenhance`` section of an OpenVINO IR's rt_info, a Triton model's
  config parameters): ``to_strings`` / ``from_strings``, with dicts JSON-encoded;
- JSON objects (a TensorRT engine's sidecar, a ``.pt2`` package's ``codeenhance.json``): ``to_json`` / ``from_json``.

A carrier may hold more keys beside the record (build flags, compile times): documentation, not provenance.

The one staleness check, ``check_fresh``, compares a record with what this process expects (each expectation a
value, or an ``Expect`` with its own rule) and raises one ``BadArtifactError`` naming every mismatch and how to
rebuild. Torch-free: every layer uses it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from . import formats
from .errors import BadArtifactError
from .files import file_sha256, update_digest
from .integrity import IR_SECTION

TOOLKIT_VERSION = "0.1.0"  # the package version (pyproject.toml reads it from here)


class Kind:
    ONNX = "onnx-graph"
    ENGINE = "tensorrt-engine"
    AOTI = "codeenhance-aoti"
    OPENVINO_IR = "openvino-ir"
    TRITON = "triton-model"


@dataclass(frozen=True)
class Environment:
    """What an artifact runs on only (None: not bound to it)."""

    torch_version: str | None = None  # torch.__version__ of the compiler (compiled packages)
    device: str | None = None  # "cpu" or "cuda"
    cpu_capability: str | None = None  # torch.backends.cpu.get_cpu_capability() (CPU kernels)
    tensorrt_version: str | None = None  # of the builder (engines)
    gpu_name: str | None = None
    compute_capability: str | None = None  # "major.minor" (GPU kernels, engines)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


ENVIRONMENT = tuple(f.name for f in fields(Environment))

# torch.backends.cpu.get_cpu_capability() values, weakest first: code built for one runs on the later ones.
CPU_CAPABILITY_ORDER = ("DEFAULT", "AVX2", "AVX512")


@dataclass(frozen=True)
class Provenance:
    kind: str
    toolkit_version: str | None = TOOLKIT_VERSION
    checkpoint_sha256: str | None = None
    source_sha256: str | None = None
    exporter_fingerprint: str | None = None
    model_config: dict | None = None
    precision: str | None = None
    shapes: dict | None = None
    payload_sha256: str | None = None
    built_for: Environment = field(default_factory=Environment)

    def get(self, name: str):
        """A field of the record, or an environment fact (None when not recorded)."""
        return getattr(self.built_for, name) if name in ENVIRONMENT else getattr(self, name)

    def with_(self, **changes) -> "Provenance":
        return replace(self, **changes)

    # -- carriers ------------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The record as top-level JSON fields; fields not recorded are left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "built_for"}
        out.update(self.built_for.as_dict())
        return {k: v for k, v in out.items() if v is not None}

    def to_strings(self) -> dict[str, str]:
        """The record as a string map (dicts as sorted JSON)."""
        return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in self.to_json().items()}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key a carrier may hold for the record (its fields, then the environment facts)."""
        return tuple(f.name for f in fields(cls) if f.name != "built_for") + ENVIRONMENT

    @classmethod
    def from_json(cls, content: Mapping, default_kind: str = "") -> "Provenance":
        """The record inside a carrier's JSON object (other keys are ignored; missing fields are None)."""
        names = [f.name for f in fields(cls) if f.name not in ("kind", "built_for")]
        return cls(kind=str(content.get("kind", default_kind)), **{n: content.get(n) for n in names},
                   built_for=Environment(**{k: content.get(k) for k in ENVIRONMENT}))

    @classmethod
    def from_strings(cls, props: Mapping[str, str], default_kind: str = "") -> "Provenance":
        """The record inside a string map (``to_strings``'s inverse)."""
        decoded = dict(props)
        for name in ("model_config", "shapes"):
            if isinstance(decoded.get(name), str):
                try:
                    decoded[name] = json.loads(decoded[name])
                except ValueError:
                    decoded[name] = None
        return cls.from_json(decoded, default_kind)


def code_fingerprint(sources, *facts) -> str:
    """12 hex digits of sha256 over the source files that make an artifact (each file's name and bytes) and
    ``facts`` (tool versions, format numbers): an ``exporter_fingerprint``. A change to any of them gives another
    fingerprint, so an artifact made before the change is made again."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(f"{Path(source).parent.name}/{Path(source).name}\0".encode())
        update_digest(digest, source)
    digest.update(repr(facts).encode())
    return digest.hexdigest()[:12]


def onnx_record(model) -> Provenance:
    """The record in an ``onnx.ModelProto``'s metadata (no onnx import needed: any object with ``metadata_props``)."""
    return Provenance.from_strings({p.key: p.value for p in model.metadata_props}, Kind.ONNX)


def read_provenance(path) -> Provenance:
    """The record an artifact file carries, read by what the file is (``contract.formats``): an ONNX graph's
    metadata, an OpenVINO IR's rt_info, a ``.pt2``'s json, else the TensorRT sidecar beside the file. A record with
    every field None (and kind "") when the file carries none. Reads no weights."""
    path = Path(path)
    kind = formats.detect(path)
    if kind == formats.ONNX_GRAPH:
        import onnx

        try:
            return onnx_record(onnx.load(str(path), load_external_data=False))
        except Exception as e:  # protobuf raises unrelated types on a corrupt file
            raise BadArtifactError(f"{path} is corrupt: onnx cannot parse it ({type(e).__name__}); it was not used. "
                                   "Export it again.") from None
    if kind == formats.OPENVINO_IR:
        import xml.etree.ElementTree as ET

        section = ET.parse(path).getroot().find(f"rt_info/{IR_SECTION}")
        values = {item.tag: item.get("value") for item in (section if section is not None else [])}
        return Provenance.from_strings({k: v for k, v in values.items() if v is not None}, Kind.OPENVINO_IR)
    if kind == formats.TORCH_PACKAGE:
        from .aoti_package import read_package_meta

        return Provenance.from_json(read_package_meta(path) or {})
    from .engine_sidecar import read_sidecar

    return Provenance.from_json(read_sidecar(path) or {})


# --------------------------------------------------------------------------------------------- the staleness check


def same(recorded: str, here: str) -> bool:
    return recorded.strip() == here.strip()


def same_release(recorded: str, here: str) -> bool:
    """Versions equal up to the local part ("2.13.0+cpu" is release 2.13.0)."""
    return recorded.split("+")[0] == here.split("+")[0]


def runs_on_cpu(recorded: str, here: str) -> bool:
    """Kernels built for CPU capability ``recorded`` run on a CPU with ``here`` (same, or a later one)."""
    if recorded in CPU_CAPABILITY_ORDER and here in CPU_CAPABILITY_ORDER:
        return CPU_CAPABILITY_ORDER.index(recorded) <= CPU_CAPABILITY_ORDER.index(here)
    return recorded == here


@dataclass(frozen=True)
class Expect:
    """What this process expects of one field: ``value``, compared by ``rule(recorded, value)``; ``why`` is added
    to the message; ``label`` names the source file of a ``*_sha256`` field ("checkpoint", "ONNX file")."""

    value: str
    rule: Callable[[str, str], bool] = same
    why: str = ""
    label: str = ""


def problem(name: str, recorded, want: Expect) -> str | None:
    if recorded is not None and want.rule(str(recorded), str(want.value)):
        return None
    if name.endswith("_sha256"):
        what = want.label or name[: -len("_sha256")]
        got = f"{str(recorded)[:12]}..." if recorded else "none"
        return f"it was made from a different {what} (sha256 {got} recorded, {str(want.value)[:12]}... here)"
    text = f"{name} is {recorded!r} in its record but {want.value!r} here"
    return f"{text} ({want.why})" if want.why else text


def stale_reasons(record: Provenance, **expected: str | Expect | None) -> list[str]:
    """Every field of ``record`` that differs from ``expected`` (field=value or Expect; None or False skips it),
    as sentences; empty when the record is fresh."""
    problems = []
    for name, want in expected.items():
        if want is None or want is False or want == "":
            continue
        found = problem(name, record.get(name), want if isinstance(want, Expect) else Expect(str(want)))
        if found:
            problems.append(found)
    return problems


def check_fresh(record: Provenance, artifact, rebuild: str, *, what: str = "",
                **expected: str | Expect | None) -> Provenance:
    """``record`` against ``expected`` (``stale_reasons``). Returns the record; raises BadArtifactError
    "stale <what> <artifact>: <every mismatch>. <Rebuild>." when any field differs."""
    problems = stale_reasons(record, **expected)
    if problems:
        raise BadArtifactError(f"stale {what or record.kind} {artifact}: " + "; ".join(problems)
                               + f". {rebuild[0].upper()}{rebuild[1:]}.")
    return record


def check_made_from(artifact, source, source_kind: str = "checkpoint") -> bool:
    """An artifact against the file the user names beside it as its source (``--ckpt A --onnx B``): BadArtifactError
    naming both files when its record says it comes from another; False when it records none."""
    record = read_provenance(artifact)
    if not record.checkpoint_sha256 or len(record.checkpoint_sha256) != 64:
        return False
    check_fresh(record, artifact, f"pass the {source_kind} it was made from, or make it again from this one",
                what="artifact", checkpoint_sha256=Expect(file_sha256(source), label=f"{source_kind} than {source}"))
    return True
