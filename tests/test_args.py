"""contract.cli: one argparse type per kind of value, the shared groups, and the entry wrapper every main() runs under
(issue 23 parts 3 and 5)."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from contract import cli as common
from contract.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, BackendError, BadArtifactError, InputError,
                             MissingDependency, NotFaithfulError)
from tests.conftest import default_sigint

REPO = Path(__file__).resolve().parents[1]
TOOLS = ["codeenhance.demo", "codeenhance.train", "export.onnx", "export.check", "export.precision", "export.openvino",
         "export.tensorrt", "export.aoti", "export.triton", "runtime.cli", "runtime.serve", "benchmarks.latency"]


def refused(kind, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        kind(text)
    return str(e.value)


# --- types -----------------------------------------------------------------------------------------------------

def test_port():
    assert common.port("8000") == 8000 and common.port("65535") == 65535
    assert "out of range: use 1..65535" in refused(common.port, "0")
    assert "out of range" in refused(common.port, "70000")
    assert "not a port number" in refused(common.port, "http")
    assert common.port_or_off("0") == 0 and common.port_or_off("8002") == 8002
    assert "out of range" in refused(common.port_or_off, "-1")


def test_whole_numbers():
    assert common.positive_int("3") == 3
    assert refused(common.positive_int, "0") == "must be >= 1, got 0"
    assert "not a whole number" in refused(common.positive_int, "2.5")
    assert common.non_negative_int("0") == 0
    assert refused(common.int_in(0, 5), "7") == "must be 0..5, got 7"


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_finite_float_refuses_nan_and_infinity(text):
    assert "finite" in refused(common.finite_float(), text)


def test_finite_float_ranges():
    unit = common.finite_float(0, 1)
    assert unit("0") == 0 and unit("1") == 1
    assert refused(unit, "1.5") == "must be within [0, 1], got 1.5"
    assert common.positive_float("0.5") == 0.5
    assert "(0, inf)" in refused(common.positive_float, "0")
    assert "not a number" in refused(common.positive_float, "fast")


def test_sizes():
    assert common.size("256x320") == (256, 320) and common.size("720p") == (720, 1280) and common.size("64") == (64, 64)
    assert "is not HxW" in refused(common.size, "256by256")
    assert "must be positive" in refused(common.size, "0x64")
    assert common.sizes("64x64,720p,64") == [(64, 64), (720, 1280)]
    assert "empty" in refused(common.sizes, ",")


def test_weight_follows_the_contract_rule():
    assert common.weight("0.5") == 0.5
    for text in ("nan", "5", "-1", "1e30"):
        assert "finite" in refused(common.weight, text)


def test_paths(tmp_path):
    a_file = tmp_path / "model.onnx"
    a_file.write_bytes(b"x")
    model = common.existing_file("model")
    assert model(str(a_file)) == a_file
    assert "model not found" in refused(model, str(tmp_path / "nope.onnx"))
    assert "is a folder" in refused(model, str(tmp_path))
    folder = common.existing_dir("--calib")
    assert folder(str(tmp_path)) == tmp_path
    assert "not a folder" in refused(folder, str(a_file))
    assert "not found" in refused(folder, str(tmp_path / "nope"))
    assert common.output_path("out/x.onnx") == Path("out/x.onnx")
    assert "empty" in refused(common.output_path, " ")


# --- flags in real parsers: a bad value is exit 2 naming the flag --------------------------------------------------

@pytest.mark.parametrize("module, argv, message", [
    ("runtime.serve", ["--repository", "r", "--http-port", "0"], "--http-port: port 0 is out of range"),
    ("runtime.serve", ["--repository", "r", "--grpc-port", "99999"], "--grpc-port: port 99999 is out of range"),
    ("runtime.serve", ["--repository", "r", "--ready-timeout", "nan"], "--ready-timeout: must be a finite number"),
    ("export.openvino", ["m.onnx", "--out", "m.xml", "--min-psnr", "nan"], "--min-psnr: must be a finite number"),
    ("export.openvino", ["m.onnx", "--out", "m.xml", "--calib-size", "8"], "--calib-size: must be >= 32"),
    ("export.precision", ["m.onnx", "--out", "f.onnx", "--calib-count", "0"], "--calib-count: must be >= 1"),
    ("export.onnx", ["--ckpt", "c.pth", "--out", "m.onnx", "--threads", "0"], "--threads: must be >= 1"),
    ("export.onnx", ["--ckpt", "c.pth", "--out", "m.onnx", "--atol", "inf"], "--atol: must be a finite number"),
    ("export.triton", ["--model", "m.onnx", "--out", "r", "--max-size", "big"], "--max-size: size 'big' is not HxW"),
])
def test_bad_flag_values_are_usage_errors(module, argv, message, capsys):
    parse = importlib.import_module(module).parse_args
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_tensorrt_workspace_must_be_finite(capsys):
    from export.tensorrt import build_arg_parser

    with pytest.raises(SystemExit):
        build_arg_parser().parse_args(["m.onnx", "--workspace", "inf"])
    assert "--workspace: must be a finite number" in capsys.readouterr().err


# --- error kinds --------------------------------------------------------------------------------------------------

def test_error_kinds_and_their_exit_codes():
    from codeenhance.checkpoint import CheckpointError
    from contract.aoti_package import StalePackageError
    from contract.engine_sidecar import StaleEngineError
    from contract.images import ImageError
    from contract.precision_rules import PrecisionError
    from export.onnx import ExportError, GraphRejected
    from export.openvino import NotFaithfulError as OpenVINONotFaithful
    from export.tensorrt import EngineBuildError, TensorRTMissingError
    from export.triton import RepositoryError
    from runtime.backend import BackendError as RuntimeBackendError
    from runtime.serve import ServeError

    kinds = {InputError: 2, BadArtifactError: 2, MissingDependency: 2, NotFaithfulError: 1, BackendError: 1}
    assert {k: k.exit_code for k in kinds} == kinds
    for cls, kind in [(CheckpointError, InputError), (ImageError, InputError), (PrecisionError, InputError),
                      (ExportError, InputError), (RepositoryError, InputError), (GraphRejected, NotFaithfulError),
                      (OpenVINONotFaithful, NotFaithfulError), (StaleEngineError, BadArtifactError),
                      (StalePackageError, BadArtifactError), (TensorRTMissingError, MissingDependency),
                      (EngineBuildError, BackendError), (RuntimeBackendError, BackendError), (ServeError, BackendError)]:
        assert issubclass(cls, kind), (cls, kind)
    assert GraphRejected.exit_code == 1 and TensorRTMissingError.exit_code == 3 and ServeError.exit_code == 2
    assert issubclass(InputError, ValueError) and issubclass(MissingDependency, ImportError)


# --- the entry wrapper --------------------------------------------------------------------------------------------

def raising(exc):
    @common.run_main
    def main(argv=None):
        raise exc

    return main


@pytest.mark.parametrize("exc, code", [(InputError("bad --x"), 2), (BadArtifactError("stale"), 2),
                                       (NotFaithfulError("18 dB"), 1), (BackendError("crashed"), 1)])
def test_a_toolkit_error_is_its_message_and_exit_code(exc, code, capsys):
    assert raising(exc)([]) == code
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_also_adds_to_the_message(capsys):
    assert raising(InputError("x exists").also("nothing was written"))([]) == 2
    assert capsys.readouterr().err == "error: x exists; nothing was written\n"


def test_keyboard_interrupt_is_exit_130(capsys):
    assert raising(KeyboardInterrupt())([]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


def test_an_unexpected_exception_is_one_line_naming_the_bug(capsys):
    assert raising(ZeroDivisionError("division by zero"))(["--x"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unexpected ZeroDivisionError: division by zero" in err and "test_args.py" in err and "in main" in err
    assert common.REPORT_TO in err and "--debug" in err


def test_debug_prints_the_traceback(capsys):
    assert raising(ZeroDivisionError("division by zero"))(["--debug"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "unexpected ZeroDivisionError" in err


def test_usage_errors_and_help_pass_through():
    @common.run_main
    def main(argv=None):
        common.parser("tool").parse_args(argv)
        return 0

    for argv, code in ((["--bogus"], 2), (["--help"], 0)):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == code
    assert main(["--debug"]) == 0


def test_ctrl_c_on_a_real_process_exits_130(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from contract.cli import run_main

        @run_main
        def main(argv=None):
            print("ready", flush=True)
            time.sleep(120)
            return 0

        sys.exit(main())
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=default_sigint)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert err.strip() == "interrupted" and "Traceback" not in err


# --- every tool uses all this -------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_main_runs_under_the_wrapper(module):
    main = importlib.import_module(module).main
    assert getattr(main, "wrapped_by_run_main", False), f"{module}.main is not decorated with contract.cli.run_main"


def test_every_tool_has_a_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {target.split(":")[0] for target in scripts.values()}
    assert set(TOOLS) <= targets, set(TOOLS) - targets


def test_a_tool_answers_a_bad_value_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "runtime.serve", "--repository", "r", "--http-port", "70000"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "port 70000 is out of range" in proc.stderr and "Traceback" not in proc.stderr


GROUP_FLAGS = {"--threads", "--overwrite", "--ckpt", "--out", "--calib", "--calib-count", "--calib-size", "--debug"}


def test_shared_flags_are_declared_only_in_contract_cli():
    """--threads, --overwrite, --ckpt, --out, --calib* and --debug come from contract.cli's groups everywhere."""
    import ast

    from tests.test_layout import declared_flags, production_files

    problems = []
    for path in production_files():
        rel = path.relative_to(REPO).as_posix()
        own = set(declared_flags(ast.parse(path.read_text()))) & GROUP_FLAGS
        if own:
            problems.append(f"{rel}: {sorted(own)}")
    assert not problems, "declare these through contract.cli's groups: " + "; ".join(problems)
