"""What the launcher watches: the Python backend's stub processes, its readiness inference, and the server's log
for why it stopped.

Triton 2.51 neither restarts a stub that died (kill -9, a crash in a backend library) nor marks its model unready:
``/v2/health/ready`` and ``/v2/models/<m>/ready`` keep answering 200 while every request fails with "Stub process
... is not healthy" (measured here; server issue #8604: python_backend's restart was dropped in its PR #360; a
model readiness that sees a dead stub is tested only from server PR #8552, Dec 2025). So the launcher watches
them: when one is gone, readiness turns off at once (the front end answers 503) and the server is stopped, so that the launcher
exits 1 with the cause and whatever supervises it (systemd, Kubernetes, a load balancer's health check) sees a
dead replica instead of one that answers every request with an error. Not restarted in place: a stub that dies
again and again (a crash triggered by some request) would then look healthy between crashes; a restart policy
belongs to the supervisor, which also counts and backs off.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

from contract import graph

from . import serve_guard as guard

STUB = "triton_python_backend_stub"
PROBE_SIDE = 16  # the readiness inference: one 16x16 image, cheap on any model
WATCH_EVERY_S = 0.5
# The stub's first argument is the model file: <repository>/<model>/<version>/model.py
MODEL_OF = re.compile(r"/([^/]+)/\d+/model\.py$")


def stub_processes(pgid: int) -> dict[int, str]:
    """pid -> model name of the live Python-backend stubs in the server's process group."""
    found = {}
    for pid in guard.group_pids(pgid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0].decode(errors="replace")) == STUB:
            match = MODEL_OF.search(args[1].decode(errors="replace")) if len(args) > 1 else None
            found[pid] = match.group(1) if match else "?"
    return found


class StubWatch:
    """Calls ``on_death(reason)`` once, from its own thread, when a stub present at start is gone."""

    def __init__(self, pgid: int, on_death, every: float = WATCH_EVERY_S):
        self.pgid, self.on_death, self.every = pgid, on_death, every
        self.stubs = stub_processes(pgid)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="codeenhance-stub-watch", daemon=True)

    def start(self) -> "StubWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            alive = stub_processes(self.pgid)
            gone = {pid: model for pid, model in self.stubs.items() if pid not in alive}
            if gone and not self._stop.is_set():
                pid, model = next(iter(gone.items()))
                self.on_death(f"the Python backend's stub process for model {model!r} (pid {pid}) died; Triton "
                              "2.51 neither restarts it nor turns readiness off (every request would fail), so the "
                              "launcher stopped the server: restart it (a supervisor's restart policy does)")
                return


def stop_quickly(process, grace: float = 5.0) -> None:
    """SIGINT, then SIGKILL of the group after ``grace`` s (a server with a dead stub may hang in its shutdown)."""
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass


def probe(url: str, model: str, timeout: float) -> str | None:
    """One real inference (a 16x16 gray image, default weights): None when the answer has the contract's output
    with the right shape and finite values, else what went wrong."""
    side = PROBE_SIDE
    shape = [1, 3, side, side]
    image, w_texture, w_style = graph.INPUT_NAMES
    body = {"inputs": [{"name": image, "shape": shape, "datatype": "FP32", "data": [0.2] * (3 * side * side)},
                       {"name": w_texture, "shape": [1, 1], "datatype": "FP32", "data": [1.0]},
                       {"name": w_style, "shape": [1, 1], "datatype": "FP32", "data": [1.0]}],
            "outputs": [{"name": graph.OUTPUT_ENHANCED, "parameters": {"binary_data": False}}]}
    request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=max(timeout, 1.0)) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            return json.loads(e.read()).get("error", str(e))
        except ValueError:
            return str(e)
    except (OSError, ValueError) as e:
        return f"no answer ({e})"
    outputs = {o.get("name"): o for o in answer.get("outputs", [])}
    out = outputs.get(graph.OUTPUT_ENHANCED)
    if out is None or out.get("shape") != shape:
        return f"the answer lacks {graph.OUTPUT_ENHANCED} {shape}: {sorted(outputs)}"
    values = out.get("data", [])
    if len(values) != 3 * side * side or not all(isinstance(v, (int, float)) and abs(v) < float("inf")
                                                 for v in values):
        return "the answer's values are missing or not finite"
    return None


def causes_in_log(log: str, crashed: bool = False) -> list[str]:
    """Why the server stopped, from its log: models that failed to load, else its last error line (not after a
    crash: a signal writes none, and the last one is unrelated, e.g. "CudaDriverHelper has not been initialized")."""
    # Explicit mode says "load failed for model 'm': ...", mode none "failed to load 'm' version 1: ..."; the
    # message is one quoted line with \n escapes: its first line is the cause, the rest the stub's "At:" frames.
    reasons = []
    for model, error in re.findall(r"(?:load failed for model|failed to load) '([^']+)'(?: version \d+)?: (.*)", log):
        cause = error.split("\\n")[0].rstrip('"')
        reasons.append(f"model {model!r} failed to load: {cause}")
    if not reasons and not crashed:  # Triton's own error lines ("E1206 10:00:00.0 123 file.cc:45] message")
        reasons += re.findall(r"^E\d{4} [\d:.]+\s+\d+ \S+\] (.*)$", log, re.M)[-1:]
    return reasons
