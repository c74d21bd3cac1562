"""What ``runtime.serve`` locks and checks: Triton's restricted APIs and the admin key, the key kept out of ``ps``,
the listening address, the warning for a server reachable beyond this machine.

Triton 2.51 has one access control: ``--http-restricted-api=<apis>:<header>=<value>`` and
``--grpc-restricted-protocol=<apis>:<header>=<value>`` (a request to those APIs must carry the header with that
value; for gRPC the header is ``triton-grpc-protocol-<header>``). The value is read only from the server's command
line, which every local user can read (``ps``, ``/proc/<pid>/cmdline``). So the launcher always restricts the admin
APIs, with the operator's key (``--admin-key-file``) or else a random key made for this start and given to nobody,
and overwrites the value in the server's argument memory as soon as the server has read it: from then on
``/proc/<pid>/cmdline`` shows ``x`` characters. Between exec and that moment (until the server's first log line,
well under a second) the value is readable; where the kernel refuses the overwrite, it stays readable and the
launcher says so.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import secrets
import socket
import stat
import string
import sys
from pathlib import Path

# Everything but health, metadata, inference and model-config (the client reads the model's configuration for its
# limits: max_hw, max_batch_size) is an operator's API.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace", "statistics")
ADMIN_HEADER = "codeenhance-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
KEY_CHARS = set(string.ascii_letters + string.digits + "-._~+/")  # a header value Triton's option parser keeps whole
MIN_KEY_LENGTH = 16
LOOPBACK_HINT = "127.0.0.1"


class AdminKey:
    """The admin key; its repr and str never show it (argparse and error messages print values)."""

    def __init__(self, value: str, source: str):
        self.value, self.source = value, source

    def __repr__(self) -> str:
        return f"AdminKey(from {self.source})"

    __str__ = __repr__


def admin_key_file(text: str) -> AdminKey:
    """argparse type of ``--admin-key-file``: a file holding one key (>= 16 characters of ``A-Za-z0-9-._~+/``)."""
    path = Path(text)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise argparse.ArgumentTypeError(f"{text} is a folder; give the file holding the key")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"admin key file not found: {text}") from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {e.strerror}") from None
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{text}: the key must be ASCII text") from None
    if len(key) < MIN_KEY_LENGTH or not set(key) <= KEY_CHARS:
        raise argparse.ArgumentTypeError(
            f"{text}: the key must be one line of at least {MIN_KEY_LENGTH} characters from A-Z a-z 0-9 - . _ ~ + / "
            f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > {text})")
    if info.st_mode & 0o077:
        print(f"warning: {text} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it",
              file=sys.stderr)
    return AdminKey(key, text)


def random_key() -> AdminKey:
    """A key nobody is given: the admin APIs stay closed to every client."""
    return AdminKey(secrets.token_urlsafe(32), "nobody: no --admin-key-file")


def restriction_args(key: AdminKey) -> list[str]:
    group = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={group}:{ADMIN_HEADER}={key.value}",
            f"--grpc-restricted-protocol={group}:{ADMIN_HEADER}={key.value}"]


def scrub_argv(pid: int, secret: str) -> bool:
    """Overwrite ``secret`` with ``x`` in process ``pid``'s argument strings (what ``ps`` and /proc/<pid>/cmdline
    read). Call it only once the process has copied its options. False when the kernel refuses (ptrace rules)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49 of proc(5)
        needle, blank = secret.encode(), b"x" * len(secret)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            args = mem.read(end - start)
            at = args.find(needle)
            while at >= 0:
                mem.seek(start + at)
                mem.write(blank)
                at = args.find(needle, at + len(needle))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle not in f.read()
    except (OSError, IndexError, ValueError):
        return False


# --- the address ----------------------------------------------------------------------------------------------------

def local_address(text: str) -> str:
    """argparse type of ``--address``: an IPv4 address of this machine (or 0.0.0.0 for all of them)."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address (e.g. 127.0.0.1, 0.0.0.0 for all "
                                         "interfaces, or one of this machine's addresses)") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(address), 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise argparse.ArgumentTypeError(f"{text} is not an address of this machine: the server can listen "
                                                 "only on its own interfaces (127.0.0.1, 0.0.0.0 for all, or one "
                                                 "that `ip addr` lists)") from None
            raise argparse.ArgumentTypeError(f"cannot listen on {text}: {e.strerror}") from None
    return str(address)


def is_loopback(address: str) -> bool:
    return ipaddress.IPv4Address(address).is_loopback


def exposure_warning(address: str, metrics: bool, admin_open: bool, grpc: bool = False) -> str | None:
    """What a client beyond this machine can and cannot do, when the server listens beyond loopback."""
    if is_loopback(address):
        return None
    where = "every interface" if address == "0.0.0.0" else address
    return (f"warning: listening on {where}: any host that reaches these ports can run inference, read model "
            "metadata and configurations and check health, with no authentication and no TLS (images travel in "
            f"clear); locked: {', '.join(RESTRICTED_APIS)} "
            f"({'open to holders of the --admin-key-file key, which also travels in clear' if admin_open else 'to everyone'})"
            f"{'; the metrics port is open to all' if metrics else ''}"
            f"{'; gRPC requests are not bounded (up to 2 GiB each): drop --grpc-port' if grpc else ''}. HTTP requests "
            "are bounded by the launcher's front end; Triton 2.51 has known CVEs "
            "(CVE-2025-23310/23311/23319/23320/23334): put a TLS proxy with authentication and request limits in "
            f"front, or listen on {LOOPBACK_HINT}")
