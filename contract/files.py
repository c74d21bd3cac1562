"""Writing files so that readers never see half of one, and hashing them."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicOutput:
    """A temporary file next to ``path`` that replaces ``path`` in one rename when the ``with`` block ends without
    an exception, and is removed when it raises.

    The temporary file is created here, before the block, so an unwritable folder fails before any long work
    (OSError). The result gets the usual permissions (0666 minus the umask), not mkstemp's 0600.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                os.chmod(self.tmp, 0o666 & ~current_umask())
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data) -> Path:
    """``data``: bytes, or anything with the buffer protocol (e.g. TensorRT's IHostMemory)."""
    with AtomicOutput(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def update_digest(digest, path: str | os.PathLike):
    """Feed a file's bytes to a hashlib object in 1 MiB chunks; returns the digest."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def file_sha256(path: str | os.PathLike) -> str:
    """What ``sha256sum`` prints for the file."""
    return update_digest(hashlib.sha256(), path).hexdigest()


def json_object(text: str, what: str, error: type[Exception], fix: str) -> dict:
    """``text`` parsed as a JSON object, or ``error`` saying that ``what`` is unreadable or no object, and ``fix``."""
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise error(f"{what} is unreadable ({exc}); {fix}") from exc
    if not isinstance(content, dict):
        raise error(f"{what} is not a JSON object; {fix}")
    return content
