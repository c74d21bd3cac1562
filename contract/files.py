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


class ManagedFolder:
    """A folder a tool writes as a whole (a Triton model repository): it carries ``MANIFEST``, the list of the files
    the tool wrote, so that ``--overwrite`` replaces exactly those. A folder holding anything else (a user's notes,
    sources, the tool's own input) is refused, listing a few of the foreign files; nothing is deleted then.
    """

    MANIFEST = ".codeenhance-manifest.json"

    def __init__(self, path: str | os.PathLike, tool: str, flag: str = "--out"):
        self.path, self.tool, self.flag = Path(path), tool, flag

    def files(self) -> set[str]:
        return {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file() or p.is_symlink()}

    def manifest(self) -> dict[str, str] | None:
        """{file: sha256} of what the tool wrote, or None when there is no readable manifest."""
        try:
            listed = json.loads((self.path / self.MANIFEST).read_text()).get("files")
        except (OSError, ValueError, AttributeError):
            return None
        return {str(k): str(v) for k, v in listed.items()} if isinstance(listed, dict) else None

    def written(self) -> set[str] | None:
        """The files the manifest lists, or None when there is no readable manifest."""
        manifest = self.manifest()
        return None if manifest is None else set(manifest)

    def changed(self) -> list[str]:
        """Files the tool wrote that are missing or no longer hold what it wrote (the integrity check of a folder
        artifact); [] when all match. A folder without a manifest raises InputError."""
        from .errors import InputError

        manifest = self.manifest()
        if manifest is None:
            raise InputError(f"{self.path} has no {self.MANIFEST}: write it with {self.tool}")
        problems = []
        for name, sha in sorted(manifest.items()):
            path = self.path / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif file_sha256(path) != sha:
                problems.append(f"{name} changed since it was written")
        return problems

    def prepare(self, overwrite: bool, inputs=()) -> None:
        """Make the folder ready to write: created, or emptied of what this tool wrote (with ``overwrite``).
        ``inputs``: paths the tool reads; one inside the folder is refused (it would be deleted before it is read).
        Raises InputError, having deleted nothing, for any other content."""
        from .errors import InputError

        where = f"{self.flag} {self.path}"
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{where} is a file; name a folder for the {self.tool} output")
        present = self.files() if self.path.is_dir() else set()
        if not present:
            self.path.mkdir(parents=True, exist_ok=True)
            return
        if not overwrite:
            raise InputError(f"{where} exists and is not empty; pass --overwrite to replace what {self.tool} wrote there")
        root = self.path.resolve()
        inside = [str(p) for p in map(Path, inputs) if p.exists() and root in Path(p).resolve().parents]
        if inside:
            raise InputError(f"{where} holds {', '.join(inside)}, an input of this command: --overwrite would delete "
                             f"it before it is read; copy it elsewhere first or choose another {self.flag}")
        written = self.written()
        if written is None:
            raise InputError(f"{where} has no {self.MANIFEST}, so it was not written by {self.tool} (or by an older "
                             f"version); refusing to delete {len(present)} file(s) there, e.g. "
                             f"{', '.join(sorted(present)[:3])}. Delete it yourself or choose another {self.flag}")
        foreign = sorted(present - written - {self.MANIFEST})
        if foreign:
            raise InputError(f"{where} holds {len(foreign)} file(s) {self.tool} did not write: "
                             f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; move them or choose "
                             f"another {self.flag} (nothing was deleted)")
        for name in sorted(written & present):
            (self.path / name).unlink()
        for folder in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        (self.path / self.MANIFEST).unlink(missing_ok=True)

    def record(self) -> None:
        """List every file now in the folder as written by the tool (call it when the tool is done)."""
        files = {name: file_sha256(self.path / name) for name in sorted(self.files() - {self.MANIFEST})}
        write_bytes_atomically(self.path / self.MANIFEST,
                               (json.dumps({"tool": self.tool, "files": files}, indent=1) + "\n").encode())
