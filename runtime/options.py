"""Each backend's options as one typed dataclass (vs-mlrt's ``Backend.TRT`` / ``Backend.OV_CPU`` style).

The dataclass is the one declaration of an option: its name (the constructor keyword and ``Enhancer(...)``
keyword), default, checks (``__post_init__``), and, through ``Flag(...)`` metadata, its command-line flag and help.
``runtime.registry`` names each backend's dataclass; the CLI builds its flags from them (a flag several backends
share is declared once, with each backend's help), the Enhancer validates keywords through them, and the benchmark
harness passes only the fields a backend declares. Adding an option: one field here, read by its backend.

Torch-free and import-light: the CLI and the registry read these without loading any backend.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from contract import cli as common
from contract.errors import InputError
from contract.graph import BF16, FP16, FP32

FLAG = "cli"  # the field metadata key


@dataclass(frozen=True)
class Flag:
    """How an option appears on the command line. ``type``/``choices``/``action``: as argparse takes them."""

    name: str
    help: str
    type: object = None
    choices: tuple | None = None
    action: str | None = None


def option(default, flag: Flag | None = None):
    """A dataclass field: ``default`` (immutable: the dataclasses are frozen) and, for options the CLI exposes, its
    ``Flag``."""
    return field(default=default, metadata={FLAG: flag} if flag else {})


def choose(value, choices, what: str, backend: str):
    if value not in choices:
        raise InputError(f"{backend}: {what} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def non_negative_threads(value, backend: str):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InputError(f"{backend}: threads must be a whole number >= 0 (0 or None: the library's default), got {value!r}")


TORCH_PRECISIONS = (FP32, "tf32", FP16, "fp16-lean")
OPENVINO_PRECISIONS = (FP32, BF16)


@dataclass(frozen=True)
class TorchOptions:
    device: str = option("cpu", Flag("--device", "torch: cpu, cuda, cuda:1"))
    precision: str = option(FP32, Flag("--precision", "torch: tf32, fp16 (CUDA autocast) or fp16-lean (fp16 weights, "
                                                      "no autocast)", choices=TORCH_PRECISIONS))
    threads: int | None = option(None, Flag("--threads", "torch: intra-op CPU threads", type=common.positive_int))
    cuda_graphs: bool = option(False, Flag("--cuda-graphs", "torch on CUDA: capture each input size once into a CUDA "
                                                            "graph and replay it", action="store_true"))

    def __post_init__(self):
        choose(self.precision, TORCH_PRECISIONS, "precision", "torch")
        non_negative_threads(self.threads, "torch")


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    providers: object = option(None, Flag("--providers", "onnxruntime: comma list of cpu, cuda, tensorrt, or auto "
                                                         "(default cpu)"))
    provider_options: dict | None = option(None)  # {provider: {option: value}}, e.g. {"tensorrt": {"trt_fp16_enable": True}}
    threads: int | None = option(None, Flag("--threads", "onnxruntime: intra-op CPU threads", type=common.positive_int))
    inter_op_threads: int | None = option(None)

    def __post_init__(self):
        non_negative_threads(self.threads, "onnxruntime")
        non_negative_threads(self.inter_op_threads, "onnxruntime")


@dataclass(frozen=True)
class TensorRTOptions:
    device: object = option(0, Flag("--device", "tensorrt: GPU index"))
    check_sidecar: bool = option(True)  # refuse an engine whose sidecar names another TensorRT version or GPU


@dataclass(frozen=True)
class OpenVINOOptions:
    precision: str | None = option(None, Flag("--precision", "openvino: bf16",
                                              choices=OPENVINO_PRECISIONS))
    threads: int | None = option(None, Flag("--threads", "openvino: inference threads", type=common.positive_int))
    cache_dir: str | os.PathLike | None = option(None, Flag(
        "--cache-dir", "openvino: keep the IR converted from an .onnx here (and, with --shapes dynamic, the compiled "
                       "model), so a second start is fast; an .xml model needs none"))
    device: str = option("CPU", Flag("--device", "openvino: CPU"))
    keep_fp32: tuple = option(())  # extra ONNX node names kept fp32 when converting for bf16
    shapes: str = option("static", Flag("--shapes", "openvino: compile per input size (static, default: least memory) "
                                                    "or once for all sizes", choices=("static", "dynamic")))

    def __post_init__(self):
        if self.precision is not None:
            choose(self.precision, OPENVINO_PRECISIONS, "precision", "openvino")
        choose(self.shapes, ("static", "dynamic"), "shapes", "openvino")
        non_negative_threads(self.threads, "openvino")


@dataclass(frozen=True)
class AotiOptions:
    device: str = option("cpu", Flag("--device", "aoti: cpu, cuda, cuda:1 (what the package was compiled for)"))
    threads: int | None = option(None, Flag("--threads", "aoti: intra-op CPU threads", type=common.positive_int))
    checkpoint_sha256: str | None = option(None)  # refuse a package compiled from another checkpoint

    def __post_init__(self):
        non_negative_threads(self.threads, "aoti")


@dataclass(frozen=True)
class TritonOptions:
    timeout: float = option(600.0, Flag("--timeout", "triton://: seconds for one inference request (default 600)",
                                        type=common.positive_float))
    connect_timeout: float = option(10.0, Flag("--connect-timeout", "triton://: seconds to connect and for each "
                                                                    "answer while loading (default 10)",
                                               type=common.positive_float))

    def __post_init__(self):
        for name in ("timeout", "connect_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value and math.isfinite(value)):
                raise InputError(f"triton: {name} must be a positive number of seconds, got {value!r}")


def flags_of(options_class) -> dict[str, Flag]:
    """field name -> Flag, for the fields the command line exposes."""
    return {f.name: f.metadata[FLAG] for f in dataclasses.fields(options_class) if FLAG in f.metadata}


def precisions_of(options_class) -> tuple[str, ...]:
    """The values of the backend's ``precision`` option; () when it has none (the model file decides)."""
    flag = flags_of(options_class).get("precision")
    return tuple(flag.choices) if flag and flag.choices else ()


def build(options_class, backend: str, given: dict):
    """The dataclass from keywords; InputError naming the unknown ones and what the backend takes."""
    names = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InputError(f"{backend}: unknown option(s) {', '.join(unknown)}; it takes {', '.join(sorted(names)) or 'none'}")
    return options_class(**given)
