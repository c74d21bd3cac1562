"""runtime/options.py: each backend's options declared once, as a dataclass; the registry, the CLI flags and the
Enhancer keywords derive from it (issue 23 part 2)."""
from __future__ import annotations

import dataclasses

import pytest

from contract.errors import InputError
from runtime import options
from runtime.cli import OPTION_FLAGS, add_backend_options, parse_args
from runtime.registry import BACKENDS


def test_every_flag_of_every_backend_reaches_the_command_line():
    for spec in BACKENDS.values():
        for name, flag in options.flags_of(spec.options_class).items():
            assert OPTION_FLAGS[name].split("/")[0] == flag.name
    args = parse_args(["in.png", "-o", "out", "--model", "m.onnx", "--threads", "3", "--shapes", "dynamic",
                       "--connect-timeout", "2.5", "--cuda-graphs"])
    assert (args.threads, args.shapes, args.connect_timeout, args.cuda_graphs) == (3, "dynamic", 2.5, True)


def test_the_registry_reads_names_and_precisions_from_the_dataclass():
    assert BACKENDS["openvino"].precisions == options.OPENVINO_PRECISIONS
    assert BACKENDS["torch"].precisions == options.TORCH_PRECISIONS
    assert BACKENDS["onnxruntime"].precisions == ()  # the graph decides
    assert set(BACKENDS["triton"].options) == {"timeout", "connect_timeout"}


def test_a_new_field_is_a_new_flag(monkeypatch):
    """What adding an option takes: one field with Flag metadata; the CLI declares it (once) from that."""
    import argparse

    @dataclasses.dataclass(frozen=True)
    class WithWarmup(options.OnnxRuntimeOptions):
        warmup: int = options.option(0, options.Flag("--warmup", "onnxruntime: runs before the first image",
                                                     type=int))

    spec = dataclasses.replace(BACKENDS["onnxruntime"], options_class=WithWarmup)
    monkeypatch.setitem(BACKENDS, "onnxruntime", spec)
    p = argparse.ArgumentParser()
    add_backend_options(p)
    assert p.parse_args(["--warmup", "2"]).warmup == 2
    assert "warmup" in spec.options


@pytest.mark.parametrize("backend, given, message", [
    ("onnxruntime", {"precision": "fp16"}, "unknown option(s) precision; it takes inter_op_threads, provider_options"),
    ("openvino", {"shapes": "fixed"}, "shapes must be one of static, dynamic"),
    ("torch", {"threads": -1}, "threads must be a whole number >= 0"),
    ("triton", {"timeout": float("nan")}, "timeout must be a positive number of seconds"),
])
def test_bad_options_are_refused_by_the_dataclass(backend, given, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        options.build(BACKENDS[backend].options_class, backend, given)
