"""Issue 21 part 7: two replicas of the same repository behind one client (``triton://A,B/MODEL``), on the real
Triton 2.51 (127.0.0.1, no mocks). One launcher is killed with -9 while a client sends requests back to back; every
request is answered, each equal to the in-process result, the ones after the kill by the other replica. The kill
comes while the first replica's Python stub is computing a batch (its CPU time rising), so a batch is lost in flight
and must be sent again. The URL's
endpoint list is checked without a server first. The only test that runs two servers at once; every wait is
bounded.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from contract.errors import InputError
from export.triton import PYTHON_MODEL, Serving, write_repository
from runtime.backend import BackendError
from runtime.triton_backend import parse_endpoints
from tests.conftest import need_triton_server

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 240
REQUESTS, KILL_AFTER = 16, 4


def test_the_url_lists_replicas():
    assert parse_endpoints("triton://127.0.0.1:8000,127.0.0.1:8010/codeenhance") == (
        [("127.0.0.1", 8000), ("127.0.0.1", 8010)], "codeenhance", "")
    assert parse_endpoints("triton:/a,b:9/m/2") == ([("a", 8000), ("b", 9)], "m", "2")
    with pytest.raises(InputError, match="listed twice"):
        parse_endpoints("triton://a:1,a:1/m")
    with pytest.raises(InputError, match="port 0 is out of range"):
        parse_endpoints("triton://a:1,b:0/m")
    with pytest.raises(BackendError, match="not a Triton model URL"):
        parse_endpoints("triton://a:1,,b:2/m")


class Launcher:
    """``python -m runtime.serve`` in a subprocess; ``ready`` is set once it printed its ready line."""

    def __init__(self, repo: Path, port: int):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", "--repository", str(repo),
                                      "--http-port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if line.startswith("ready:"):
                self.ready.set()

    def wait_ready(self):
        if not self.ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
            pytest.fail("a launcher did not get ready:\n" + "\n".join(self.lines[-30:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def test_a_replica_killed_mid_run_loses_no_request(tiny_onnx, tmp_path):
    need_triton_server()
    from benchmarks.serving_bounds import cpu_seconds
    from benchmarks.triton_load import make_images
    from runtime import Enhancer, serve_guard as guard
    from runtime.serve import free_port
    from runtime.serve_watch import stub_processes
    from runtime.triton_backend import TritonBackend

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo, serving=Serving(max_batch=2, max_hw=(128, 128), delay_us=1000), threads=1)
    images = make_images(REQUESTS, 96, 128)  # long enough a batch to kill the server in the middle of one
    with Enhancer(tiny_onnx) as local:
        expected = [local.enhance(image) for image in images]
    before = guard.regions()
    first, second = Launcher(repo, free_port()), Launcher(repo, free_port())
    try:
        first.wait_ready()
        second.wait_ready()
        backend = TritonBackend(f"triton://127.0.0.1:{first.port},127.0.0.1:{second.port}/{PYTHON_MODEL}")
        answers, done = [None] * REQUESTS, threading.Event()
        progress = threading.Semaphore(0)

        def client():
            with Enhancer(backend=backend, batch=1) as remote:
                for i, image in enumerate(images):
                    try:
                        answers[i] = remote.enhance(image)
                    except Exception as e:  # noqa: BLE001 - a lost request: reported below
                        answers[i] = e
                    progress.release()
            done.set()

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        for _ in range(KILL_AFTER):
            assert progress.acquire(timeout=120), "the client stalled before the kill"
        assert backend.active == ("127.0.0.1", first.port)  # the first replica was serving
        stub = next(iter(stub_processes(_child_server(first.proc.pid))))
        busy, deadline = cpu_seconds(stub), time.monotonic() + 30
        while cpu_seconds(stub) == busy and time.monotonic() < deadline:
            time.sleep(0.002)
        assert cpu_seconds(stub) > busy, "the first replica's stub never started the next batch"
        os.kill(first.proc.pid, signal.SIGKILL)  # mid-batch: the launcher, its front end and (parent-death) its server
        assert done.wait(240), "the client did not finish after the kill"
        lost = [(i, a) for i, a in enumerate(answers) if not isinstance(a, np.ndarray)]
        assert not lost, f"requests lost when a replica died: {lost}"
        for got, want in zip(answers, expected):
            assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert backend.failovers == 1 and backend.active == ("127.0.0.1", second.port)
        first.proc.wait(10)
    finally:
        for launcher in (first, second):
            if launcher.proc.poll() is None:
                launcher.stop() if launcher is second else launcher.proc.kill()
    deadline = time.monotonic() + 20
    while guard.regions() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not guard.regions() - before, "a replica left /dev/shm regions"


def _child_server(parent: int) -> int:
    """The tritonserver process the launcher ``parent`` started."""
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if "(tritonserver)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            return int(entry)
    pytest.fail(f"no tritonserver started by {parent}")
