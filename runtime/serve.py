"""python -m runtime.serve --repository REPO: the real Triton Inference Server on a model repository.

Starts the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel (Triton 2.51 with its Python backend;
``pip install "codeenhance-deploy[serve]"``) on REPO (``python -m export.triton``), waits until the models are
ready, forwards the server's log to stderr, and stops it cleanly on Ctrl-C or SIGTERM. Models whose backend that
server lacks (``onnxruntime_onnx``, ``tensorrt_plan``: those need the Triton container) are left out with a
note unless named with --model. Exit status: 0 stopped by a signal, 1 the server failed or stopped by itself,
2 bad arguments, a port taken, the server not installed or a model that cannot load.

The Python backend's stub links the system's libpython3.11, not this interpreter: it is given this
environment's site-packages and the toolkit's folder through $CODEENHANCE_PYTHONPATH, which the model *appends*
to sys.path (this environment's standard library must not replace the stub's own).
"""
from __future__ import annotations

import collections
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from contract import cli as common
from contract.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BackendError

INSTALL = 'pip install "codeenhance-deploy[serve]" (or: pip install --no-deps nvidia-pytriton==0.7.0)'
# Backends the bundled server has (pytriton ships only the Python backend).
BUNDLED_BACKENDS = {"python"}


class ServeError(BackendError):
    """The server cannot be started or did not become ready, with the reason. Exit 2 (nothing was served), as this
    command has always answered it, rather than a backend failure's 1."""

    exit_code = EXIT_USAGE


def find_server() -> dict[str, Path]:
    """Paths of the bundled tritonserver, its Python backend, the stub for this Python and its libraries."""
    spec = importlib.util.find_spec("pytriton")  # located, not imported: its own code is not needed
    if spec is None or not spec.submodule_search_locations:
        raise ServeError(f"the Triton server is not installed: {INSTALL}")
    package = Path(list(spec.submodule_search_locations)[0])
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {
        "tritonserver": root / "bin" / "tritonserver",
        "backend": root / "backends" / "python",
        "stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
        "libs": package.parent / "nvidia_pytriton.libs",
    }
    missing = [f"{k} ({p})" for k, p in paths.items() if not p.exists()]
    if missing:
        raise ServeError(f"the nvidia-pytriton installation lacks {', '.join(missing)}"
                         f"{' (no Python backend stub for Python ' + version + ')' if 'stub' in str(missing) else ''}; "
                         f"reinstall: {INSTALL}")
    return paths


def python_path() -> str:
    """This environment's site-packages and the folder holding the toolkit's packages (an editable install is
    found through a .pth file, which the stub does not read)."""
    entries = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
               str(Path(__file__).resolve().parents[1])]
    return os.pathsep.join(dict.fromkeys(entries))


def model_backends(repository: Path) -> dict[str, str]:
    """Model name -> its backend or platform, read from each config.pbtxt."""
    found = {}
    for config in sorted(repository.glob("*/config.pbtxt")):
        text = config.read_text()
        match = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, re.M)
        found[config.parent.name] = match.group(1) if match else "?"
    return found


def port_free(port: int, address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """The server as a context manager: ``with TritonServer(repo, http_port=p) as server: server.url``.

    ``models``: names to load (default: those the bundled server can run). ``log``: a writable text stream for
    the server's log lines (None: kept in memory only; the last lines are in error messages either way).
    """

    def __init__(self, repository, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int | None = None,
                 address: str = "127.0.0.1", models: list[str] | None = None, log=sys.stderr,
                 ready_timeout: float = 300.0, verbose: int = 0):
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address, self.log, self.ready_timeout, self.verbose = address, log, ready_timeout, verbose
        self.requested = models
        self.models: list[str] = []
        self.left_out: dict[str, str] = {}
        self.process: subprocess.Popen | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.workspace: Path | None = None

    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint (what tritonclient.http takes)."""
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"{host}:{self.http_port}"

    def model_url(self, model: str | None = None) -> str:
        return f"triton://{self.url}/{model or self.models[0]}"

    def select_models(self) -> None:
        if not self.repository.is_dir():
            raise ServeError(f"--repository {self.repository} is not a folder; write one with python -m export.triton")
        backends = model_backends(self.repository)
        if not backends:
            raise ServeError(f"--repository {self.repository} holds no <model>/config.pbtxt; write one with "
                             "python -m export.triton")
        if self.requested:
            unknown = [m for m in self.requested if m not in backends]
            if unknown:
                raise ServeError(f"model(s) {', '.join(unknown)} not in {self.repository} (it has {', '.join(backends)})")
            self.models = list(self.requested)
        else:
            self.models = [m for m, b in backends.items() if b in BUNDLED_BACKENDS]
            self.left_out = {m: b for m, b in backends.items() if b not in BUNDLED_BACKENDS}
            if not self.models:
                raise ServeError(f"no model in {self.repository} runs on the bundled server (only the Python backend): "
                                 f"{', '.join(f'{m} ({b})' for m, b in backends.items())}")

    def check_ports(self) -> None:
        ports = {"HTTP": self.http_port, "gRPC": self.grpc_port}
        if self.metrics_port:
            ports["metrics"] = self.metrics_port
        if len(set(ports.values())) < len(ports):
            raise ServeError(f"the ports must differ: {ports}")
        for what, port in ports.items():
            if not port_free(port, self.address if what == "HTTP" else "0.0.0.0"):
                raise ServeError(f"port {port} ({what}) is already in use on this machine; stop what uses it or "
                                 f"pass another --{what.lower()}-port")

    def command(self, paths: dict[str, Path]) -> list[str]:
        cmd = [str(paths["tritonserver"]), f"--model-repository={self.repository}",
               f"--backend-directory={self.workspace / 'backends'}", "--model-control-mode=explicit",
               f"--http-port={self.http_port}", f"--http-address={self.address}", f"--grpc-port={self.grpc_port}",
               f"--grpc-address={self.address}", "--exit-on-error=true", "--strict-readiness=true",
               f"--log-verbose={self.verbose}", "--exit-timeout-secs=20"]
        cmd += [f"--load-model={m}" for m in self.models]
        if self.metrics_port:
            cmd += [f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false"]
        else:
            cmd.append("--allow-metrics=false")
        return cmd

    def start(self) -> "TritonServer":
        paths = find_server()
        self.select_models()
        self.check_ports()
        self.workspace = Path(tempfile.mkdtemp(prefix="codeenhance-triton-"))
        backend = self.workspace / "backends" / "python"
        backend.mkdir(parents=True)
        for source in (paths["backend"] / "libtriton_python.so", paths["backend"] / "triton_python_backend_utils.py",
                       paths["stub"]):
            shutil.copy2(source, backend / source.name)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(paths["libs"]), env.get("LD_LIBRARY_PATH")]))
        env["CODEENHANCE_PYTHONPATH"] = python_path()
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)  # entries before the stub's standard library: the version mix to avoid
        self.process = subprocess.Popen(self.command(paths), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
        threading.Thread(target=self._forward, daemon=True).start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _forward(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.log is not None:
                print(f"[triton] {line}", file=self.log, flush=True)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=2) as response:
                return response.status
        except Exception:  # noqa: BLE001 - not up yet, refused, 400 "not ready"
            return 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the log reader catch the last lines
                raise ServeError(self.failure(f"the server exited with status {self.process.returncode} before it "
                                              "was ready"))
            if self._get("/v2/health/ready") == 200 and all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                return
            time.sleep(0.25)
        raise ServeError(self.failure(f"the server was not ready after {self.ready_timeout:g} s"))

    def failure(self, what: str) -> str:
        """``what``, with the cause found in the log: a port taken, a model that failed to load."""
        log = "\n".join(self.lines)
        reasons = []
        if re.search(r"address already in use|failed to (start|bind)", log, re.I):
            reasons.append(f"a port is taken (HTTP {self.http_port}, gRPC {self.grpc_port}"
                           f"{f', metrics {self.metrics_port}' if self.metrics_port else ''}); pass other ports")
        for model, error in re.findall(r"load failed for model '([^']+)': (.*)", log):
            reasons.append(f"model {model!r} failed to load: {error}")
        for error in re.findall(r"(\w*Error: .*)", log)[-3:]:
            reasons.append(error)
        tail = "\n  ".join(list(self.lines)[-15:])
        return f"{what}: " + ("; ".join(dict.fromkeys(reasons)) or "see the log below") + f"\n  last log lines:\n  {tail}"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (Triton's graceful shutdown: in-flight requests finish), then SIGKILL after ``timeout``."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the stub processes too
                    self.process.wait()
            code = self.process.returncode
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None
        return code

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (fault tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_args(argv):
    p = common.parser("python -m runtime.serve", __doc__)
    p.add_argument("--repository", required=True, type=Path, help="model repository (python -m export.triton)")
    p.add_argument("--http-port", type=common.port, default=8000, help="HTTP port, 1..65535 (default 8000)")
    p.add_argument("--grpc-port", type=common.port, default=8001, help="gRPC port, 1..65535 (default 8001)")
    p.add_argument("--metrics-port", type=common.port_or_off, default=0, help="Prometheus metrics port (default 0: off)")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--model", action="append", dest="models", help="model to load (repeatable; default: all the "
                                                                    "bundled server can run)")
    p.add_argument("--ready-timeout", type=common.positive_float, default=300.0, help="seconds to wait for readiness (default 300)")
    p.add_argument("--log-verbose", type=common.non_negative_int, default=0, help="Triton's --log-verbose level")
    return p.parse_args(argv)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = TritonServer(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port or None, address=args.address, models=args.models,
                          ready_timeout=args.ready_timeout, verbose=args.log_verbose)
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        for model, backend in server.left_out.items():
            print(f"note: {model} ({backend}) left out: this server has only the Python backend (run it in the "
                  "Triton container)", file=sys.stderr)
        print(f"ready: {', '.join(server.models)} on http://{server.url} (gRPC port {server.grpc_port}); "
              f"clients: --model {server.model_url()}. Ctrl-C stops.", file=sys.stderr, flush=True)
        code = server.process.wait()
        print(f"error: {server.failure(f'the server stopped by itself (status {code})')}", file=sys.stderr)
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        print("stopping the server (in-flight requests finish first)...", file=sys.stderr, flush=True)
        for s in previous:  # a second Ctrl-C during shutdown must not leave the server behind
            signal.signal(s, signal.SIG_IGN)
        code = server.stop()
        print(f"stopped (status {code})", file=sys.stderr)
        return EXIT_OK
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
