"""Bad inputs against the newer tools (export.aoti, export.openvino, export.triton, export.tensorrt --dry-run,
triton://, benchmarks/latency.py), one test per kind a new user ran into: exit status, message, and that nothing was
lost or left behind. Rows checked elsewhere: corrupt artifacts (test_integrity.py, test_aoti.py,
test_runtime_tensorrt.py), --overwrite of a Triton repository (test_triton.py), runtime.serve's flags
(test_args.py, test_serve_security.py)."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from contract.errors import EXIT_INTERRUPTED, EXIT_USAGE
from tests.conftest import default_sigint

REPO = Path(__file__).resolve().parents[1]


def tool(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def refused(result, *phrases):
    """Exit 2 with one `error:` line holding each phrase, and no traceback."""
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr[-2000:])


@pytest.fixture
def files(tiny_ckpt, tiny_onnx, tmp_path):
    """Copies of the tiny checkpoint and graph in a folder of their own, plus a photo and a text file."""
    import cv2

    shutil.copy(tiny_ckpt, tmp_path / "model.pth")
    shutil.copy(tiny_onnx, tmp_path / "model.onnx")
    cv2.imwrite(str(tmp_path / "photo.png"), np.full((40, 48, 3), 60, np.uint8))
    (tmp_path / "notes.txt").write_text("an operator's notes\n")
    return tmp_path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- data loss ---------------------------------------------------------------------------------------------------

def test_aoti_refuses_to_write_over_its_checkpoint(files):
    before = snapshot(files)
    r = tool("-m", "export.aoti", "--ckpt", files / "model.pth", "--out", files / "model.pth", "--overwrite")
    refused(r, "is also the input --ckpt", "choose another --out")
    assert snapshot(files) == before


@pytest.mark.parametrize("command", [
    ["export.precision", "{d}/model.onnx", "--out", "{d}/model.onnx", "--overwrite"],
    ["export.openvino", "{d}/model.onnx", "--out", "{d}/model.onnx", "--overwrite"],
    ["export.onnx", "--ckpt", "{d}/model.pth", "--out", "{d}/model.pth", "--overwrite"],
    ["codeenhance.demo", "--out", "{d}/model.pth", "--overwrite", "--seed", "3"],
])
def test_no_tool_writes_over_an_input(files, command):
    before = snapshot(files)
    r = tool("-m", *[c.format(d=files) for c in command])
    if command[0] == "codeenhance.demo":  # its --out is its only file: replacing it is what --overwrite asks
        assert r.returncode == 0, r.stderr
        return
    refused(r, "a tool never writes over its own input")
    assert snapshot(files) == before


# --- hangs -------------------------------------------------------------------------------------------------------

@pytest.fixture
def silent_port():
    """A port on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_triton_url_to_a_silent_port_fails_within_the_connect_timeout(files, silent_port):
    out = files / "out"
    start = time.monotonic()
    r = tool("-m", "runtime", files / "photo.png", "-o", out, "--model", f"triton://127.0.0.1:{silent_port}/codeenhance",
             "--connect-timeout", "1.5", timeout=120)
    elapsed = time.monotonic() - start
    refused(r, "no answer within 1.5 s (connect_timeout)")
    assert elapsed < 60 and not out.exists()


# --- broken artifacts ----------------------------------------------------------------------------------------------

def test_triton_repository_from_a_model_without_a_suffix_is_refused(files):
    shutil.copy(files / "model.onnx", files / "graph")
    r = tool("-m", "export.triton", "--model", files / "graph", "--out", files / "repo")
    refused(r, "cannot tell the backend from the suffix", "name it graph.onnx")
    assert not (files / "repo").exists() or not any((files / "repo").iterdir())


def test_triton_python_model_must_be_runnable(files):
    (files / "ir.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11">\n</net>\n')  # no ir.bin beside it
    r = tool("-m", "export.triton", "--model", files / "model.onnx", "--out", files / "r1", "--python-model", files / "ir.xml")
    refused(r, "ir.bin are not beside it")
    r = tool("-m", "export.triton", "--model", files / "model.onnx", "--out", files / "r2", "--python-model", files / "notes.txt")
    refused(r, "--python-model", "notes.txt", "--python-backend")
    r = tool("-m", "export.triton", "--model", files / "model.onnx", "--out", files / "r3", "--python-backend", "bogus")
    refused(r, "invalid choice: 'bogus'")
    assert not any((files / name).exists() and any((files / name).iterdir()) for name in ("r1", "r2", "r3"))


@pytest.mark.parametrize("flags, phrase", [
    (["--min", "512x512", "--opt", "256x256"], "min <= opt <= max"),
    (["--trt-version", "abc"], "'abc' is not a version number"),
    (["--timing-cache", "{d}"], "is a folder; name the timing cache file itself"),
    (["--workspace", "inf"], "must be a finite number"),
    (["--opt-level", "9"], "must be 0..5"),
    (["--max-batch", "0"], "must be >= 1"),
])
def test_tensorrt_dry_run_refuses_what_cannot_be_built(files, flags, phrase):
    r = tool("-m", "export.tensorrt", files / "model.onnx", "--out", files / "engines", "--dry-run",
             *[f.format(d=files) for f in flags])
    refused(r, phrase)
    assert not (files / "engines").exists()


# --- tracebacks ----------------------------------------------------------------------------------------------------

def test_triton_url_port_out_of_range(files):
    r = tool("-m", "runtime", files / "photo.png", "-o", files / "out", "--model", "triton://127.0.0.1:70000/codeenhance")
    refused(r, "port 70000 is out of range: use 1..65535")
    assert "AttributeError" not in r.stderr and not (files / "out").exists()


def test_triton_repository_out_naming_a_file(files):
    r = tool("-m", "export.triton", "--model", files / "model.onnx", "--out", files / "notes.txt")
    refused(r, "is a file; name a folder")
    assert (files / "notes.txt").read_text() == "an operator's notes\n"


def test_aoti_size_beyond_what_can_be_planned(files):
    r = tool("-m", "export.aoti", "--ckpt", files / "model.pth", "--out", files / "big.pt2", "--sizes", "100000x100000")
    refused(r, "has a side above 16384")
    assert not (files / "big.pt2").exists()


def test_latency_out_naming_a_file(files):
    r = tool("benchmarks/latency.py", "--backends", "onnxruntime", "--sizes", "64x64", "--out", files / "notes.txt")
    assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr
    assert (files / "notes.txt").read_text() == "an operator's notes\n"


@pytest.mark.parametrize("command", [
    ["export.aoti", "--ckpt", "{d}/model.pth", "--out", "{d}/m.pt2", "--sizes", "64x64,128x128,192x192"],
    ["export.openvino", "{d}/model.onnx", "--out", "{d}/m.xml"],
])
def test_ctrl_c_exits_130_and_leaves_nothing(files, command):
    before = set(snapshot(files))
    proc = subprocess.Popen([sys.executable, "-m", *[c.format(d=files) for c in command]], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        time.sleep(2.5)  # past the imports, into the work (both take far longer than this here)
        if proc.poll() is not None:
            pytest.skip(f"{command[0]} finished in 2.5 s on this machine: nothing to interrupt")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert set(snapshot(files)) == before  # no output, no temporary file


# --- messages -------------------------------------------------------------------------------------------------------

def test_aoti_given_a_graph_says_it_is_a_graph(files):
    r = tool("-m", "export.aoti", "--ckpt", files / "model.onnx", "--out", files / "m.pt2")
    refused(r, "model.onnx is an ONNX graph, not a torch checkpoint", "pass the .pth checkpoint it was made from")
    assert "Python objects" not in r.stderr


def test_a_right_name_with_the_wrong_backend_is_not_told_to_rename(files):
    from contract.errors import InputError
    from runtime import Enhancer

    (files / "ir.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11">\n</net>\n')
    with pytest.raises(InputError) as e:
        Enhancer(files / "ir.xml", backend="onnxruntime")
    assert "rename it to ir.xml" not in str(e.value) and "--backend openvino" in str(e.value)


def test_a_size_beyond_a_fixed_model_names_that_models_fix():
    from runtime.backend import BackendInfo, check_batch

    info = BackendInfo(name="aoti", device="cpu", precision="fp32", max_hw=(95, 95),
                       larger="compile a package with a bucket for it (python -m export.aoti --sizes HxW, or --dynamic)")
    one = np.ones(1, np.float32)
    with pytest.raises(ValueError) as e:
        check_batch(np.zeros((1, 3, 128, 128), np.float32), one, one, info)
    assert "export.aoti --sizes" in str(e.value) and "engine" not in str(e.value)


# --- also broken ------------------------------------------------------------------------------------------------------

def test_latency_resolves_relative_paths_against_the_callers_folder(files):
    from benchmarks.latency import parse_args

    here = Path.cwd()
    try:
        import os

        os.chdir(files)
        args = parse_args(["--ckpt", "model.pth", "--onnx", "model.onnx", "--backends", "onnxruntime", "--sizes", "64x64"])
    finally:
        os.chdir(here)
    assert args.ckpt == files / "model.pth" and args.onnx == files / "model.onnx"


def test_openvino_gate_cannot_be_turned_off_by_nan(files):
    r = tool("-m", "export.openvino", files / "model.onnx", "--out", files / "m.xml", "--min-psnr", "nan")
    refused(r, "must be a finite number")
    assert not (files / "m.xml").exists()


def test_a_corrupt_calibration_photo_is_named(files):
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    calib = files / "calib"
    calib.mkdir()
    shutil.copy(files / "photo.png", calib / "good.png")
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    r = tool("-m", "export.openvino", files / "model.onnx", "--out", files / "m.xml", "--calib", calib,
             "--precision", "bf16", "--min-psnr", "0", "--min-worst-psnr", "0")
    assert "skipped calibration image" in r.stderr and "broken.jpg" in r.stderr, r.stderr[-2000:]


def test_a_model_that_fails_to_load_leaves_no_output_folder(files):
    (files / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a graph")
    out = files / "new" / "out"
    r = tool("-m", "runtime", files / "photo.png", "-o", out, "--model", files / "broken.onnx")
    refused(r, "broken.onnx")
    assert not out.exists()
