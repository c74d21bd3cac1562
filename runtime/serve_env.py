"""What ``runtime.serve`` needs from this machine: the bundled Triton server's files, the Python path its stub is
given, the models a repository holds, free ports, and the parent-death signal that ties the server to the launcher.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import signal
import socket
import sys
import sysconfig
from pathlib import Path

from contract.errors import EXIT_USAGE, BackendError

INSTALL = 'pip install "codeenhance-deploy[serve]" (or: pip install --no-deps nvidia-pytriton==0.7.0)'
# Backends the bundled server has (pytriton ships only the Python backend).
BUNDLED_BACKENDS = {"python"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
HAS_PDEATHSIG = _LIBC is not None


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




def die_with_launcher(parent: int):
    """preexec_fn: the kernel SIGKILLs the server when the launcher's thread that started it ends (kill -9 too).
    Runs in the child between fork and exec; ``parent`` catches a launcher that died before the prctl."""

    def set_signal():
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_signal
