"""python -m runtime.serve --repository REPO: the real Triton Inference Server on a model repository.

Starts the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel (Triton 2.51 with its Python backend;
``pip install "codeenhance-deploy[serve]"``) on REPO (``python -m export.triton``), waits until each model answers a
real tiny inference, forwards the server's log to stderr, and stops it cleanly on Ctrl-C or SIGTERM. Models whose
backend that server lacks (``onnxruntime_onnx``, ``tensorrt_plan``: those need the Triton container) are left out
with a note unless named with --model. Exit status: 0 stopped by a signal, 1 the server failed or stopped by
itself, 2 bad arguments, a port taken, the server not installed or a model that cannot load.

Locked by default (README "Security"): model control is ``none`` (the models are fixed at start: no client can
load, unload or upload one), and the repository, shared-memory, logging, trace and statistics APIs need the header
``codeenhance-admin-key`` with the key in --admin-key-file (without one, nobody has the key). The server and its
Python stubs die with the launcher, however it dies (a parent-death signal, and a guard process that kills their
process group and removes their /dev/shm regions and workspace: ``runtime/serve_guard.py``).

Bounded by default: clients reach a front end (``runtime/serve_front.py``) on --http-port that refuses chunked,
compressed and oversized bodies and inference requests beyond the models' max batch and largest image before
Triton allocates anything; Triton's HTTP listens on a loopback port behind it. gRPC is off unless --grpc-port is
given (Triton 2.51 takes gRPC messages up to 2 GiB, with no option to bound them). A Python stub that dies turns
readiness off and stops the server (exit 1): Triton 2.51 would keep answering "ready" (``runtime/serve_watch.py``).

The Python backend's stub links the system's libpython3.11, not this interpreter: it is given this
environment's site-packages and the toolkit's folder through $CODEENHANCE_PYTHONPATH, which the model *appends*
to sys.path (this environment's standard library must not replace the stub's own).
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from contract import cli as common
from contract.files import ManagedFolder
from contract.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BadArtifactError

from . import serve_guard as guard
from . import serve_watch as watch
from .serve_bounds import BoundsError, served_bounds
# find_server, free_port, port_free and ServeError are part of this module's API (tests, benchmarks use them here).
from .serve_env import (BUNDLED_BACKENDS, HAS_PDEATHSIG, ServeError, die_with_launcher, find_server,  # noqa: F401
                        free_port, model_backends, port_free, python_path)
from .serve_safety import (ADMIN_HEADER, RESTRICTED_APIS, AdminKey, admin_key_file, exposure_warning, local_address,
                           random_key, restriction_args, scrub_argv)

class TritonServer:
    """The server as a context manager: ``with TritonServer(repo, http_port=p) as server: server.url``.

    ``models``: names to load (default: those the bundled server can run). ``log``: a writable text stream for
    the server's log lines (None: kept in memory only; the last lines are in error messages either way).
    ``http_port``/``grpc_port`` 0: a free port, chosen at start; ``grpc_port`` None: gRPC off (it cannot be
    bounded). ``admin_key``: opens the admin APIs to clients that send it (``ADMIN_HEADER``); None: they stay
    closed to every client. ``front_end`` False: Triton's HTTP on ``http_port`` itself, unbounded (benchmarks).
    ``stopped_because``: set when the launcher stopped the server itself (a stub died).
    """

    def __init__(self, repository, *, http_port: int = 8000, grpc_port: int | None = None,
                 metrics_port: int | None = None, address: str = "127.0.0.1", models: list[str] | None = None,
                 log=sys.stderr, ready_timeout: float = 300.0, verbose: int = 0, admin_key: AdminKey | None = None,
                 front_end: bool = True):
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address, self.log, self.ready_timeout, self.verbose = address, log, ready_timeout, verbose
        self.requested = models
        self.admin_key = admin_key
        self.use_front_end = front_end
        self.backend_port: int | None = None  # Triton's own HTTP port (behind the front end: on 127.0.0.1)
        self.front = None
        self.watch: watch.StubWatch | None = None
        self.stopped_because: str | None = None
        self.models: list[str] = []
        self.left_out: dict[str, str] = {}
        self.process: subprocess.Popen | None = None
        self.guard: subprocess.Popen | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.workspace: Path | None = None
        self.key_hidden = False  # the key no longer readable in the server's /proc/<pid>/cmdline
        self._key: AdminKey | None = None

    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint clients use (what tritonclient.http takes)."""
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"{host}:{self.http_port}"

    @property
    def backend_url(self) -> str:
        """host:port of Triton's own HTTP endpoint (the same as ``url`` without the front end)."""
        return f"127.0.0.1:{self.backend_port}" if self.use_front_end else self.url

    def model_url(self, model: str | None = None) -> str:
        return f"triton://{self.url}/{model or self.models[0]}"

    def select_models(self) -> None:
        if not self.repository.is_dir():
            raise ServeError(f"--repository {self.repository} is not a folder; write one with python -m export.triton")
        backends = model_backends(self.repository)
        if not backends:
            raise ServeError(f"--repository {self.repository} holds no <model>/config.pbtxt; write one with "
                             "python -m export.triton")
        # A repository export.triton wrote carries its files' hashes: a changed or missing one is refused before
        # the server loads it (a repository made by hand has no manifest and is served unverified).
        folder = ManagedFolder(self.repository, "python -m export.triton", flag="--repository")
        changed = folder.changed() if folder.manifest() is not None else []
        if changed:
            raise BadArtifactError(f"--repository {self.repository} is corrupt: {'; '.join(changed[:5])}; "
                                   "write it again with python -m export.triton")
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
        if not self.http_port:
            self.http_port = free_port()
        if self.grpc_port == 0:
            self.grpc_port = free_port()
        ports = {"HTTP": self.http_port}
        if self.grpc_port is not None:
            ports["gRPC"] = self.grpc_port
        if self.metrics_port:
            ports["metrics"] = self.metrics_port
        if self.use_front_end:
            self.backend_port = free_port()
        if len(set(ports.values())) < len(ports):
            raise ServeError(f"the ports must differ: {ports}")
        for what, port in ports.items():
            if not port_free(port, self.address if what != "metrics" else "0.0.0.0"):
                raise ServeError(f"port {port} ({what}) is already in use on this machine; stop what uses it or "
                                 f"pass another --{what.lower()}-port")

    def model_view(self) -> Path:
        """A repository holding only the selected models (links to REPO's folders): with model control ``none``
        Triton loads every model it finds, and one whose backend it lacks would stop it."""
        view = self.workspace / "models"
        view.mkdir()
        for model in self.models:
            (view / model).symlink_to(self.repository / model, target_is_directory=True)
        return view

    def command(self, paths: dict[str, Path]) -> list[str]:
        # Model control "none": load, unload and upload do not exist, whatever key a client has (an upload is a
        # Python model, code run as the server's user). Changing the models means restarting the server.
        cmd = [str(paths["tritonserver"]), f"--model-repository={self.model_view()}",
               f"--backend-directory={self.workspace / 'backends'}", "--model-control-mode=none",
               "--exit-on-error=true", "--strict-readiness=true", f"--log-verbose={self.verbose}",
               "--exit-timeout-secs=20"]
        if self.use_front_end:  # only the front end reaches Triton's HTTP
            cmd += [f"--http-port={self.backend_port}", "--http-address=127.0.0.1"]
        else:
            cmd += [f"--http-port={self.http_port}", f"--http-address={self.address}"]
        if self.grpc_port is None:
            cmd.append("--allow-grpc=false")
        else:
            cmd += [f"--grpc-port={self.grpc_port}", f"--grpc-address={self.address}"]
        cmd += restriction_args(self._key)
        if self.metrics_port:
            cmd += [f"--metrics-port={self.metrics_port}", f"--metrics-address={self.address}",
                    "--allow-gpu-metrics=false"]
        else:
            cmd.append("--allow-metrics=false")
        return cmd

    def start(self) -> "TritonServer":
        paths = find_server()
        if self.use_front_end and importlib.util.find_spec("aiohttp") is None:  # before a minute of loading
            raise ServeError('the request front end needs aiohttp: pip install "aiohttp>=3.12.14" (part of the '
                             "[serve] extra)")
        self.select_models()
        self.check_ports()
        self._key = self.admin_key or random_key()
        self.workspace = Path(tempfile.mkdtemp(prefix="codeenhance-triton-"))
        try:
            backend = self.workspace / "backends" / "python"
            backend.mkdir(parents=True)
            for source in (paths["backend"] / "libtriton_python.so",
                           paths["backend"] / "triton_python_backend_utils.py", paths["stub"]):
                shutil.copy2(source, backend / source.name)
            self._launch(paths)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, paths: dict[str, Path]) -> None:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(paths["libs"]), env.get("LD_LIBRARY_PATH")]))
        env["CODEENHANCE_PYTHONPATH"] = python_path()
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)  # entries before the stub's standard library: the version mix to avoid
        before = sorted(guard.regions())
        # The parent-death signal follows the thread that forks: only the main thread lives as long as the process.
        main_thread = threading.current_thread() is threading.main_thread() and HAS_PDEATHSIG
        self.process = subprocess.Popen(self.command(paths), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True,
                                        preexec_fn=die_with_launcher(os.getpid()) if main_thread else None)
        # The guard holds the read end of a pipe only this process writes: end-of-file = the launcher is gone.
        self.guard = subprocess.Popen([sys.executable, "-I", guard.__file__], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.guard.stdin.write(json.dumps({"pgid": self.process.pid, "before": before,
                                           "workspace": str(self.workspace)}).encode() + b"\n")
        self.guard.stdin.flush()
        threading.Thread(target=self._forward, daemon=True).start()

    def _forward(self) -> None:
        for line in self.process.stdout:
            if not self.key_hidden:  # the first line comes after Triton parsed (copied) its options
                self.key_hidden = scrub_argv(self.process.pid, self._key.value)
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.log is not None:
                print(f"[triton] {line}", file=self.log, flush=True)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.backend_url}{path}", timeout=2) as response:
                return response.status
        except Exception:  # noqa: BLE001 - not up yet, refused, 400 "not ready"
            return 0

    def start_front_end(self) -> None:
        """The bounds come from each model's configuration as Triton loaded it (max_batch_size, max_hw)."""
        from .serve_front import FrontEnd

        try:
            bounds = served_bounds(self.backend_url, self.models)
        except BoundsError as e:
            raise ServeError(str(e)) from None
        self.front = FrontEnd(bounds, self.backend_port, ADMIN_HEADER)
        try:
            self.front.start(self.address, self.http_port)
        except OSError as e:
            self.front = None
            raise ServeError(f"port {self.http_port} (HTTP) is already in use on this machine or cannot be bound "
                             f"({e.strerror or e}); stop what uses it or pass another --http-port") from None

    def on_stub_death(self, reason: str) -> None:
        """From the watch's thread: readiness off at once, then the server stops (the launcher's wait returns)."""
        if self.front is not None:
            self.front.unhealthy = reason
        time.sleep(0.3)
        if self.process.poll() is not None:  # the whole server died (its stubs with it): the launcher says why
            return
        self.stopped_because = reason
        if self.log is not None:
            print(f"error: {reason}", file=self.log, flush=True)
        watch.stop_quickly(self.process)

    def probe(self, model: str, timeout: float) -> str | None:
        """One real inference through the clients' endpoint: None when it answered right, else what went wrong."""
        return watch.probe(self.url, model, timeout)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the log reader catch the last lines
                raise ServeError(self.failure(f"the server exited with status {self.process.returncode} before it "
                                              "was ready"))
            if self._get("/v2/health/ready") == 200 and all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                break
            time.sleep(0.25)
        else:
            raise ServeError(self.failure(f"the server was not ready after {self.ready_timeout:g} s"))
        if self.use_front_end:
            self.start_front_end()
        self.watch = watch.StubWatch(self.process.pid, self.on_stub_death)  # the stubs there now are the ones to keep
        for model in self.models:  # loaded is not answering: a real request proves the whole path
            problem = self.probe(model, deadline - time.monotonic())
            if problem:
                raise ServeError(self.failure(f"model {model!r} is loaded but a test inference failed: {problem}"))
        self.watch.start()
        if not self.key_hidden:  # no log line yet: the options were parsed long ago
            self.key_hidden = scrub_argv(self.process.pid, self._key.value)

    def failure(self, what: str, crashed: bool = False) -> str:
        """``what``, with the cause found in the log: a port taken, a model that failed to load, else the server's
        last error line (not when it ``crashed``: a signal writes no error line, and the last one is unrelated).
        One line when the log was shown as it came (``log``); else the last log lines follow."""
        log = "\n".join(self.lines)
        reasons = []
        if re.search(r"address already in use|failed to (start|bind)", log, re.I):
            reasons.append(f"a port is taken (HTTP {self.backend_port or self.http_port}"
                           f"{f', gRPC {self.grpc_port}' if self.grpc_port else ''}"
                           f"{f', metrics {self.metrics_port}' if self.metrics_port else ''}); pass other ports")
        reasons += watch.causes_in_log(log, crashed=crashed)
        message = f"{what}: " + ("; ".join(dict.fromkeys(reasons)) or "see the server's log above")
        if self.log is None:
            message += "\n  last log lines:\n  " + "\n  ".join(list(self.lines)[-15:])
        return message

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (Triton's graceful shutdown: in-flight requests finish), then SIGKILL after ``timeout``; then the
        guard kills what is left of the process group (a stub stuck in a batch ignores SIGTERM) and removes the
        /dev/shm regions and the workspace."""
        code = None
        if self.watch is not None:
            self.watch.stop()
        if self.front is not None:  # no new requests first
            self.front.stop()
            self.front = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the stub processes too
                    self.process.wait()
            code = self.process.returncode
        if self.guard is not None:
            try:
                self.guard.stdin.close()  # end-of-file: the guard cleans up and exits
                self.guard.wait(guard.GONE_WITHIN_S + 10)
            except (OSError, subprocess.TimeoutExpired):
                self.guard.kill()
            self.guard = None
        if self.process is not None:  # the guard did this; again in case it could not
            guard.kill_group(self.process.pid, within=2.0)
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


def describe_status(code: int) -> str:
    """"status 1", or the signal that killed it ("killed by SIGSEGV"): a crash is not an error line in its log."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"status {code}"


def parse_args(argv):
    p = common.parser("python -m runtime.serve", __doc__)
    p.error = lambda message: _usage_error(p, message)
    # A Path, checked at start (not an argparse type): a bad later flag is then named first, whatever the order.
    p.add_argument("--repository", required=True, type=Path, help="model repository (python -m export.triton)")
    p.add_argument("--http-port", type=common.port, default=8000, help="HTTP port, 1..65535 (default 8000)")
    p.add_argument("--grpc-port", type=common.port, default=None,
                   help="also serve gRPC on this port, 1..65535 (default: off: Triton 2.51 takes gRPC messages up to "
                        "2 GiB and the front end bounds HTTP only; see README Security)")
    p.add_argument("--metrics-port", type=common.port_or_off, default=0, help="Prometheus metrics port (default 0: off)")
    p.add_argument("--address", type=local_address, default="127.0.0.1",
                   help="IPv4 address of this machine to listen on (default 127.0.0.1; 0.0.0.0 for all: see README "
                        "Security)")
    p.add_argument("--model", action="append", dest="models", help="model to load (repeatable; default: all the "
                                                                    "bundled server can run)")
    p.add_argument("--ready-timeout", type=common.positive_float, default=300.0, help="seconds to wait for readiness (default 300)")
    p.add_argument("--log-verbose", type=common.non_negative_int, default=0, help="Triton's --log-verbose level")
    p.add_argument("--admin-key-file", type=admin_key_file, dest="admin_key",
                   help=f"file holding the key that opens the admin APIs ({', '.join(RESTRICTED_APIS)}) to clients "
                        f"sending it in the header {ADMIN_HEADER} (default: closed to all)")
    return p.parse_args(argv)


def _usage_error(p, message: str):
    """A bad flag: one line and exit 2 (argparse would print the whole usage first)."""
    print(f"error: {message} (see {p.prog} --help)", file=sys.stderr)
    sys.exit(EXIT_USAGE)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = TritonServer(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port or None, address=args.address, models=args.models,
                          ready_timeout=args.ready_timeout, verbose=args.log_verbose, admin_key=args.admin_key)
    warning = exposure_warning(args.address, bool(args.metrics_port), args.admin_key is not None,
                               grpc=args.grpc_port is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
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
        admin = (f"open to clients sending the {ADMIN_HEADER} header from {args.admin_key.source}" if args.admin_key
                 else "closed (no --admin-key-file)")
        if not server.key_hidden:
            print("warning: could not hide the restricted-API key in the server's command line (ps shows it); "
                  "the kernel refused to rewrite it", file=sys.stderr)
        grpc = (f"gRPC port {server.grpc_port}, not bounded" if server.grpc_port else "gRPC off")
        print(f"ready: {', '.join(server.models)} on http://{server.url} (requests bounded; {grpc}); admin APIs "
              f"{admin}; clients: --model {server.model_url()}. Ctrl-C stops.", file=sys.stderr, flush=True)
        code = server.process.wait()
        if server.watch is not None:
            server.watch.thread.join(2)  # its message, if it stopped the server, comes first
        if not server.stopped_because:  # else the watch has said why
            print(f"error: {server.failure(f'the server stopped by itself ({describe_status(code)})', crashed=code < 0)}",
                  file=sys.stderr)
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
