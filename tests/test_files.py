"""contract.files: the one temp-file-and-rename writer and the file hash every package uses."""
import hashlib
import os
import stat

import pytest

from contract.files import AtomicOutput, file_sha256, write_bytes_atomically


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_success_replaces_the_target_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "model.onnx"
    with AtomicOutput(target) as tmp:
        assert tmp.parent == target.parent and tmp.exists() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert leftovers(target.parent) == []


def test_failure_keeps_the_previous_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "engine.plan"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="validation"):
        with AtomicOutput(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("validation failed")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_unwritable_folder_fails_before_the_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        AtomicOutput(blocker / "out.onnx")  # a parent that is a file


def test_write_bytes_accepts_buffers(tmp_path):
    target = write_bytes_atomically(tmp_path / "a.bin", memoryview(b"\x00\x01\x02"))
    assert target.read_bytes() == b"\x00\x01\x02"


def test_file_sha256_is_what_sha256sum_prints(tmp_path):
    data = os.urandom(3 << 20)  # more than one read chunk
    path = tmp_path / "ckpt.pth"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
