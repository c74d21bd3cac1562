"""The serving bounds, measured on the real Triton 2.51: four hostile requests against the server alone and
behind the launcher's front end (peak memory, answer, still serving?), and what the front end costs per request.

    python benchmarks/serving_bounds.py [--workdir DIR] [--requests 40] [--out FILE.md]

Each variant runs in a child process (``--serve``: ``runtime.serve.TritonServer``, front end on or off), so that
the clients here do not share an interpreter with the front end. Attacks, each followed by a good inference:
a 255-byte JSON request declaring ``image`` 1x3x8000x8000; a 108 MB body (the largest legal request of the
repository, max batch 8 of 256x256 images, is 7.3 MB); a 389 KB gzip body that inflates to 400 MB; one request of
600,000 one-byte chunks (last: it crashes the server alone). Peak memory is each process's VmHWM, reset before
each attack (``/proc/<pid>/clear_refs``), minus its resident size before. Latency: tritonclient (binary tensors),
64x64 images, p50 over ``--requests`` requests at 1 client and at 16. Only 127.0.0.1 is contacted; every wait is
bounded. The tiny preset is exported to the work folder (untrained weights: cost only).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract import cli as common  # noqa: E402
from contract.graph import INPUT_IMAGE, INPUT_W_STYLE, INPUT_W_TEXTURE, OUTPUT_ENHANCED  # noqa: E402
from export.triton import PYTHON_MODEL, Serving, write_repository  # noqa: E402
from runtime import serve_guard as guard  # noqa: E402

SERVING = Serving(max_batch=8, max_hw=(256, 256), delay_us=1000)
IMAGE = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
INFER = f"/v2/models/{PYTHON_MODEL}/infer"


# --- the hostile requests (each returns the HTTP status, or what happened instead) ---------------------------------

def _answer(sock: socket.socket, timeout: float = 60.0) -> str:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return f"no answer ({type(e).__name__})"
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line.split(" ", 2)[1] if line.startswith("HTTP/") else "connection closed, no answer"


def _post(port: int, headers: dict, parts, timeout: float = 120.0) -> str:
    """Send the request head, then the body parts while the server has not answered; then read its answer."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        for part in parts:
            if select.select([sock], [], [], 0)[0]:
                break  # it answered (and will close): stop sending
            try:
                sock.sendall(part)
            except OSError:
                break
        return _answer(sock)
    finally:
        sock.close()


def declare_huge(port: int) -> str:
    body = json.dumps({"inputs": [{"name": INPUT_IMAGE, "shape": [1, 3, 8000, 8000], "datatype": "FP32", "data": [0.5]},
                                  {"name": INPUT_W_TEXTURE, "shape": [1, 1], "datatype": "FP32", "data": [1.0]},
                                  {"name": INPUT_W_STYLE, "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).encode()
    return _post(port, {"Content-Type": "application/json", "Content-Length": len(body)}, [body])


def oversized(port: int, size: int = 108_000_000) -> str:
    header = json.dumps({"inputs": [{"name": INPUT_IMAGE, "shape": [1, 3, 64, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    piece = b"\0" * (1 << 20)
    parts = [header] + [piece] * (size // len(piece)) + [piece[:size % len(piece)]]
    return _post(port, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": len(header),
                        "Content-Length": len(header) + size}, parts)


def compressed(port: int) -> str:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format; fed in pieces (400 MB never in memory)
    parts = [squeeze.compress(json.dumps({"inputs": [{"name": INPUT_IMAGE, "shape": [1, 3, 64, 64], "datatype": "FP32",
                                                      "data": [0.5] * (3 * 64 * 64)}]}).encode())]
    spaces = b" " * (1 << 20)
    parts += [squeeze.compress(spaces) for _ in range(400_000_000 // len(spaces))] + [squeeze.flush()]
    body = b"".join(parts)
    return _post(port, {"Content-Type": "application/json", "Content-Encoding": "gzip",
                        "Content-Length": len(body)}, [body])


def many_chunks(port: int, chunks: int = 600_000) -> str:
    batch = b"1\r\n \r\n" * 1000
    return _post(port, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                 [batch] * (chunks // 1000) + [b"0\r\n\r\n"])


ATTACKS = {"255-byte JSON declaring 1x3x8000x8000": declare_huge, "108 MB body": oversized,
           "389 KB gzip body (400 MB inflated)": compressed, "600,000 one-byte chunks": many_chunks}


# --- measuring -------------------------------------------------------------------------------------------------------

def memory(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                values[line[:5]] = int(line.split()[1])
    if len(values) < 2:  # a zombie: it died
        raise ProcessLookupError(pid)
    return values["VmHWM"], values["VmRSS"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peaks(pids) -> dict[int, int]:
    """Reset each process's peak to its resident size (clear_refs 5); their resident sizes now, KiB."""
    now = {}
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        now[pid] = memory(pid)[1]
    return now


def peak_rise(before: dict[int, int]) -> dict[int, float]:
    """MiB each process's peak rose above its resident size before (None: it died)."""
    rise = {}
    for pid, rss in before.items():
        try:
            rise[pid] = (memory(pid)[0] - rss) / 1024
        except OSError:
            rise[pid] = None
    return rise


def infer_inputs(image: np.ndarray) -> list:
    """tritonclient inputs for a batch of images with default weights ([N,1], as the repository declares them)."""
    import tritonclient.http as http

    inputs = []
    for name, value in ((INPUT_IMAGE, image), (INPUT_W_TEXTURE, np.ones((len(image), 1), np.float32)),
                        (INPUT_W_STYLE, np.ones((len(image), 1), np.float32))):
        tensor = http.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def good_inference(url: str, image=IMAGE, timeout: float = 120.0):
    """The enhanced image, or the error text."""
    import tritonclient.http as http

    client = http.InferenceServerClient(url, network_timeout=timeout, connection_timeout=10)
    try:
        return client.infer(PYTHON_MODEL, infer_inputs(image)).as_numpy(OUTPUT_ENHANCED)
    except Exception as e:  # noqa: BLE001 - reported
        return f"{type(e).__name__}: {e}"
    finally:
        client.close()


def p50_latency(url: str, clients: int, requests: int) -> tuple[float, int]:
    """(p50 ms, errors) of ``requests`` 64x64 inferences shared by ``clients`` threads, each with its own connection."""
    import tritonclient.http as http

    latencies, errors, lock = [], [], threading.Lock()
    todo = iter(range(requests))

    def client():
        conn = http.InferenceServerClient(url, network_timeout=120)
        inputs = infer_inputs(IMAGE)
        try:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                start = time.perf_counter()
                try:
                    conn.infer(PYTHON_MODEL, inputs).as_numpy(OUTPUT_ENHANCED)
                    with lock:
                        latencies.append((time.perf_counter() - start) * 1000)
                except Exception as e:  # noqa: BLE001 - counted
                    with lock:
                        errors.append(str(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return float(np.percentile(latencies, 50)) if latencies else float("nan"), len(errors)


# --- one variant -----------------------------------------------------------------------------------------------------

class Child:
    """``TritonServer`` in a child process (``--serve``); ``pids``: the front end's process (the child) and the
    server's process group."""

    def __init__(self, repo: Path, front_end: bool, port: int):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(repo), "--port", str(port),
                                      "--front-end", "on" if front_end else "off"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "ready <server pid>", or nothing when it failed
        if not line.startswith("ready"):
            self.proc.kill()
            raise RuntimeError("the server did not start")
        self.server = int(line.split()[1])
        self.url = f"127.0.0.1:{port}"

    def pids(self) -> list[int]:
        return [self.proc.pid] + guard.group_pids(self.server)

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # end-of-file: the child stops its server
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def serve(repo: str, port: int, front_end: bool) -> int:
    from runtime.serve import TritonServer

    with TritonServer(repo, http_port=port, log=None, ready_timeout=240, front_end=front_end) as server:
        print(f"ready {server.process.pid}", flush=True)
        sys.stdin.read()
    return 0


def measure(repo: Path, front_end: bool, requests: int) -> dict:
    from runtime.serve import free_port

    child = Child(repo, front_end, free_port())
    result = {"latency": {}, "attacks": {}}
    try:
        for _ in range(3):  # warm-up
            good_inference(child.url)
        for clients in (1, 16):
            cpu = cpu_seconds(child.proc.pid)  # the child runs the front end (with it) or only waits (without)
            result["latency"][clients] = p50_latency(child.url, clients, requests)
            result.setdefault("child_cpu_ms", {})[clients] = (cpu_seconds(child.proc.pid) - cpu) * 1000 / requests
        for name, attack in ATTACKS.items():
            before = reset_peaks(child.pids())
            start = time.perf_counter()
            answer = attack(int(child.url.rsplit(":", 1)[1]))
            seconds = time.perf_counter() - start
            time.sleep(1.0)  # a crash takes a moment to show
            rise = peak_rise(before)
            front = rise.pop(child.proc.pid) if front_end else None
            alive = child.proc.poll() is None and all(v is not None for v in rise.values())
            served = alive and isinstance(good_inference(child.url, timeout=60), np.ndarray)
            result["attacks"][name] = {"answer": answer, "seconds": seconds, "front_mib": front,
                                       "server_mib": sum(v or 0 for v in rise.values()), "still_serving": served}
            if not alive:
                break
    finally:
        child.close()
    return result


def report(results: dict, command: str, requests: int) -> str:
    alone, front = results["Triton alone"], results["behind the front end"]
    lines = [
        "# Serving bounds: Triton 2.51 alone and behind the launcher's front end", "",
        f"`{command}` on {os.cpu_count()} shared CPU cores (a training job running beside it): "
        "tiny preset (untrained), repository max batch 8, largest image 256x256 (largest legal request 7.3 MB), "
        "dynamic batching 1 ms, 127.0.0.1.", "",
        "## Hostile requests", "",
        "Peak memory: rise of VmHWM over the resident size before the request, tritonserver plus its Python stub "
        "(and, behind the front end, the launcher process that runs it). '-': not reached (the server had crashed).",
        "", "| request | alone: answer | alone: server peak MiB | alone: still serving | front end: answer | "
            "front end: server peak MiB | front end: its own peak MiB | front end: still serving |",
        "|---|---|---|---|---|---|---|---|"]
    for name in ATTACKS:
        a, f = alone["attacks"].get(name), front["attacks"].get(name)
        cell = (lambda r: [r["answer"], f"{r['server_mib']:.0f}", "yes" if r["still_serving"] else "**no**"]
                if r else ["-", "-", "-"])
        fc = cell(f)
        lines.append(f"| {name} | {' | '.join(cell(a))} | {fc[0]} | {fc[1]} | "
                     f"{'-' if not f else format(f['front_mib'], '.0f')} | {fc[2]} |")
    lines += ["", f"## Cost per request (64x64, {requests} requests per level, p50 ms, errors)", "",
              "| clients | Triton alone | behind the front end | difference | front end CPU ms/request |",
              "|---|---|---|---|---|"]
    for clients in (1, 16):
        (a, ae), (f, fe) = alone["latency"][clients], front["latency"][clients]
        lines.append(f"| {clients} | {a:.1f} ({ae}) | {f:.1f} ({fe}) | {f - a:+.1f} ms ({(f / a - 1) * 100:+.0f}%) | "
                     f"{front['child_cpu_ms'][clients]:.2f} |")
    lines += ["", "Front end CPU: CPU time of the launcher process (the front end's thread; the launcher itself only "
                  "waits) per request, a figure the machine's load does not inflate as it does latency."]
    return "\n".join(lines) + "\n"


@common.run_main
def main(argv=None) -> int:
    p = common.parser("python benchmarks/serving_bounds.py", __doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--requests", type=common.positive_int, default=40, help="requests per latency level (default 40)")
    common.add_output(p, required=False, default=ROOT / "benchmarks/results/cpu-2core/serving_bounds.md",
                      overwrite_help=None, help="the markdown report to write")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--front-end", choices=("on", "off"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port, args.front_end == "on")
    from benchmarks.triton_load import tiny_model

    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        repo = work / "bounds-repo"
        if not repo.exists():
            write_repository(tiny_model(work), repo, serving=SERVING, threads=1)
        results = {}
        for label, front_end in (("behind the front end", True), ("Triton alone", False)):
            results[label] = measure(repo, front_end, args.requests)
            print(label, json.dumps(results[label], default=str), flush=True)
    command = "python benchmarks/serving_bounds.py" + (f" --requests {args.requests}" if args.requests != 40 else "")
    text = report(results, command, args.requests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
