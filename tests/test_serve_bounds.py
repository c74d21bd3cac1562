"""Issue 21 parts 2, 3 and 5 (a dead stub) on the real Triton 2.51 behind the launcher's front end (127.0.0.1 only,
no mocks): a request declaring a huge image, a body far above the largest legal request, a gzip body and one of
600,000 one-byte chunks are refused before Triton allocates for them, the server's peak memory stays put and a
good request is answered after each; the largest legal request still works (streamed or not); gRPC is off and
Triton's HTTP is on loopback behind the front end; a Python stub killed with -9 turns readiness off within 10 s
and the launcher exits 1 naming the cause, leaving nothing behind.

One server at a time: the launcher test first, then the module's server for the rest. Every wait is bounded.
The bounds' arithmetic is checked without a server first.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from export.triton import PYTHON_MODEL, Serving, write_repository
from runtime.serve_bounds import BoundsError, check_request, model_bounds
from tests.conftest import need_triton_server

REPO = Path(__file__).resolve().parents[1]
MAX_HW, MAX_BATCH = (160, 192), 4
SERVER_PATHS = re.compile(r"Traceback|\.py\b|/tmp/|/root/|/work/|/home/|site-packages")
START_TIMEOUT = 240
CONFIG = {"name": PYTHON_MODEL, "max_batch_size": MAX_BATCH,
          "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, -1, -1]},
                    {"name": "w_texture", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}},
                    {"name": "w_style", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}],
          "parameters": {"max_hw": {"string_value": f"{MAX_HW[0]}x{MAX_HW[1]}"}}}


# --- the bounds, without a server ----------------------------------------------------------------------------------

def request(shape=(1, 3, 16, 16), weights=(1, 1), datatype="FP32", binary=True, **extra):
    items = []
    for name, s in (("image", list(shape)), ("w_texture", list(weights)), ("w_style", list(weights))):
        item = {"name": name, "shape": s, "datatype": datatype}
        if binary:
            item["parameters"] = {"binary_data_size": int(np.prod(s)) * 4}
        items.append(item)
    header = {"inputs": items, **extra}
    binary_bytes = sum(i["parameters"]["binary_data_size"] for i in items) if binary else 0
    return header, binary_bytes


def test_bounds_come_from_the_models_configuration():
    bounds = model_bounds(CONFIG)
    assert bounds.inputs["image"].max_shape == (MAX_BATCH, 3, *MAX_HW)
    assert bounds.inputs["w_texture"].max_shape == (MAX_BATCH, 1)
    assert bounds.max_body == (1 << 20) + MAX_BATCH * 3 * MAX_HW[0] * MAX_HW[1] * 4 + 2 * MAX_BATCH * 4
    with pytest.raises(BoundsError, match="no max_hw parameter"):
        model_bounds({**CONFIG, "parameters": {}})
    with pytest.raises(BoundsError, match="not fixed"):
        model_bounds({**CONFIG, "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]})


@pytest.mark.parametrize("change, message", [
    (dict(shape=(1, 3, 8000, 8000)), "exceeds the largest size"),
    (dict(shape=(MAX_BATCH + 1, 3, 16, 16), weights=(MAX_BATCH + 1, 1)), "exceeds the largest size"),
    (dict(shape=(1, 3, 16)), "exceeds the largest size"),
    (dict(shape=(1, 3, 16.0, 16)), "whole numbers"),
    (dict(shape=(1, 3, True, 16)), "whole numbers"),
    (dict(shape=(1, 3, -1, 16)), "whole numbers"),
    (dict(datatype="FP64"), "must be FP32"),
])
def test_requests_beyond_the_bounds_are_refused(change, message):
    header, binary = request(**change)
    length = 100 + binary
    problem = check_request(model_bounds(CONFIG), header, length, 100)
    assert problem and message in problem, problem


def test_binary_sizes_must_match_the_shapes_and_the_body():
    bounds = model_bounds(CONFIG)
    header, binary = request(shape=(MAX_BATCH, 3, *MAX_HW), weights=(MAX_BATCH, 1))
    assert check_request(bounds, header, 300 + binary, 300) is None  # the largest legal request
    assert "add up to" in check_request(bounds, header, 300 + binary + 1, 300)
    header["inputs"][0]["parameters"]["binary_data_size"] = 4
    assert "binary_data_size must be" in check_request(bounds, header, 300 + binary, 300)
    json_only, _ = request(binary=False)
    assert check_request(bounds, json_only, 5000, 5000) is None
    assert "unexpected input" in check_request(bounds, {"inputs": [{"name": "x"}]}, 10, 10)
    twice = {"inputs": [json_only["inputs"][0]] * 2}
    assert "given twice" in check_request(bounds, twice, 10, 10)
    assert "non-empty 'inputs'" in check_request(bounds, [], 10, 10)


# --- a stub killed with -9: the launcher ----------------------------------------------------------------------------



@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bounds") / "repo"
    write_repository(tiny_onnx, path, serving=Serving(max_batch=MAX_BATCH, max_hw=MAX_HW, delay_us=1000), threads=1)
    return path


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0  # refused: the server is gone


def test_a_dead_stub_turns_readiness_off_and_the_launcher_exits_1(repo):
    need_triton_server()
    from runtime import serve_guard as guard
    from runtime.serve import free_port
    from runtime.serve_watch import stub_processes

    port = free_port()
    before = guard.regions()
    proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", "--repository", str(repo), "--http-port",
                             str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, ready = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line.rstrip())
            if line.startswith("ready:"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(START_TIMEOUT), "\n".join(lines[-30:])
        server = int(next(p for p in os.listdir("/proc") if p.isdigit() and _is_child_server(int(p), proc.pid)))
        stubs = stub_processes(server)
        assert list(stubs.values()) == [PYTHON_MODEL], stubs
        url = f"http://127.0.0.1:{port}"
        assert status(f"{url}/v2/health/ready") == 200
        os.kill(next(iter(stubs)), signal.SIGKILL)
        killed = time.monotonic()
        while status(f"{url}/v2/health/ready") == 200 and time.monotonic() - killed < 10:
            time.sleep(0.2)
        assert time.monotonic() - killed < 10, "readiness still 200 ten seconds after the stub died"
        assert proc.wait(60) == 1
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and "stub process for model 'codeenhance'" in errors[0] and "died" in errors[0], lines
        deadline = time.monotonic() + 15
        while (guard.group_pids(server) or guard.regions() - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not guard.group_pids(server) and not guard.regions() - before
    finally:
        if proc.poll() is None:
            proc.kill()


def _is_child_server(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "(tritonserver)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == parent


# --- the front end, on one server -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(repo):
    need_triton_server()
    from runtime.serve import TritonServer

    server = TritonServer(repo, http_port=0, log=None, ready_timeout=START_TIMEOUT)
    server.start()
    yield server
    server.stop()


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def assert_still_serving(server):
    from benchmarks.serving_bounds import good_inference

    out = good_inference(server.url)
    assert isinstance(out, np.ndarray) and np.isfinite(out).all(), out
    assert server.process.poll() is None


def server_peak_rise(server, attack) -> tuple[str, float]:
    """(the answer's status, the rise in MiB of tritonserver's and its stubs' peak memory while it ran)."""
    from benchmarks.serving_bounds import peak_rise, reset_peaks
    from runtime import serve_guard as guard

    before = reset_peaks(guard.group_pids(server.process.pid))
    answer = attack(port_of(server))
    rise = peak_rise(before)
    assert None not in rise.values(), "a server process died"
    return answer, sum(rise.values())


def test_grpc_is_off_and_triton_listens_on_loopback_behind_the_front_end(server):
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--allow-grpc=false" in cmdline and b"--http-address=127.0.0.1" in cmdline
    assert f"--http-port={server.backend_port}".encode() in cmdline and server.backend_port != server.http_port
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200") and b"aiohttp" in head  # the front end answered, not Triton


def test_a_huge_declared_shape_is_refused_before_triton_allocates(server):
    from benchmarks.serving_bounds import declare_huge

    answer, rise = server_peak_rise(server, declare_huge)
    assert answer == "400"
    assert rise < 200, f"the server's peak memory rose {rise:.0f} MiB (Triton alone: ~730 MiB)"
    assert_still_serving(server)


def test_a_body_above_the_largest_legal_request_is_refused_unread(server):
    from benchmarks.serving_bounds import oversized

    start = time.monotonic()
    answer, rise = server_peak_rise(server, oversized)
    assert answer == "413" and rise < 50, (answer, rise)
    assert time.monotonic() - start < 20  # refused on its Content-Length: 108 MB never crossed loopback
    assert_still_serving(server)


def test_compressed_and_chunked_bodies_are_refused_and_600k_chunks_leave_it_serving(server):
    from benchmarks.serving_bounds import compressed, many_chunks

    answer, rise = server_peak_rise(server, compressed)
    assert answer == "415" and rise < 50, (answer, rise)
    answer, rise = server_peak_rise(server, many_chunks)  # crashed Triton 2.51 alone (SIGSEGV)
    assert answer == "411" and rise < 50, (answer, rise)
    assert_still_serving(server)


def raw(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.url}{path}", data=body if method == "POST" else None,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_paths_methods_and_headers_outside_the_api_are_refused(server):
    header, binary = request(shape=(1, 3, 16, 16))
    head = json.dumps(header).encode()
    body = head + b"\0" * binary
    infer = f"/v2/models/{PYTHON_MODEL}/infer"
    cases = [
        ("POST", f"/v2/models/{PYTHON_MODEL}/generate", b"{}", {}, 404),
        ("POST", "/v2/models/no_such_model/infer", b"{}", {}, 404),
        ("PUT", infer, b"", {}, 405),
        ("GET", f"/v2/models/{PYTHON_MODEL}/%69nfer", b"", {}, 400),
        ("POST", infer, body, {"Inference-Header-Content-Length": "0"}, 400),
        ("POST", infer, body, {"Inference-Header-Content-Length": str(len(head) + 1)}, 400),
        ("POST", infer, b"{not json", {}, 400),
    ]
    for method, path, data, headers, expected in cases:
        code, answer = raw(server, method, path, data, headers)
        assert code == expected, (method, path, headers, code, answer)
        assert answer.get("error") and not SERVER_PATHS.search(answer["error"]), answer
    assert_still_serving(server)


def test_the_largest_legal_request_is_answered_streamed_or_not(server, monkeypatch):
    from benchmarks.serving_bounds import good_inference
    from runtime import serve_front

    image = np.random.default_rng(1).random((MAX_BATCH, 3, *MAX_HW), dtype=np.float32)
    whole = good_inference(server.url, image)
    assert isinstance(whole, np.ndarray) and whole.shape == image.shape, whole
    monkeypatch.setattr(serve_front, "BUFFER_LIMIT", 64 << 10)  # this size now takes the streaming path both ways
    streamed = good_inference(server.url, image)
    assert isinstance(streamed, np.ndarray) and np.array_equal(streamed, whole)
