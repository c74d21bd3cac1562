"""python -m runtime: real files written here (PNG, JPEG, 16-bit, gray, RGBA, broken ones), the tiny checkpoint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import Enhancer
from runtime.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, encode_image, main

REPO = Path(__file__).resolve().parents[1]
ODD_NAME = "night shot näïve 夜景.png"  # spaces and non-ASCII letters


def write(path: Path, image: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(path.suffix, image)
    assert ok
    encoded.tofile(path)  # tofile/fromfile: cv2.imwrite cannot open non-ASCII names on every platform
    return path


def read(path: Path) -> np.ndarray:
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def pixels(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * np.iinfo(dtype).max).astype(dtype)


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "odd.png", pixels((37, 53, 3), seed=1))
    write(folder / "gray.png", pixels((20, 31), seed=2))
    write(folder / "alpha.png", pixels((18, 22, 4), seed=3))
    write(folder / "deep.png", pixels((16, 24, 3), np.uint16, seed=4))
    write(folder / "photo.jpg", pixels((24, 32, 3), seed=5))
    write(folder / "dot.png", pixels((1, 1, 3), seed=6))
    write(folder / ODD_NAME, pixels((12, 14, 3), seed=7))
    write(folder / "depth64.tiff", np.random.default_rng(9).random((6, 6, 3)))  # float64: not supported
    whole = cv2.imencode(".png", pixels((40, 40, 3), seed=8))[1].tobytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.png").write_text("this is text, not an image\n")
    (folder / "readme.txt").write_text("not picked up from a folder: not an image extension\n")
    return folder


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_folder_of_mixed_files(inputs, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, inputs, "-o", out, "--model", tiny_ckpt, "--batch", "3", "--w-texture", "0.5")
    assert rc == EXIT_FAILED  # two broken files and one unsupported
    assert "wrote 7 of 10 image(s)" in stdout
    assert "truncated.png: not a readable image" in err and "notes.png: not a readable image" in err
    # In the first batch of 3 with alpha.png and deep.png, which are still written.
    assert "depth64.tiff: cannot enhance: image dtype must be uint8, uint16 or float32" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["odd.png", "gray.png", "alpha.png", "deep.png", "photo.png", "dot.png", ODD_NAME])

    assert read(out / "odd.png").shape == (37, 53, 3)
    assert read(out / "gray.png").shape == (20, 31)  # gray stays gray
    alpha_in, alpha_out = read(inputs / "alpha.png"), read(out / "alpha.png")
    assert alpha_out.shape == (18, 22, 4) and np.array_equal(alpha_out[..., 3], alpha_in[..., 3])
    assert read(out / "deep.png").dtype == np.uint16  # 16-bit PNG stays 16-bit
    assert read(out / "dot.png").shape == (1, 1, 3)
    assert read(out / ODD_NAME).shape == (12, 14, 3)
    # The CLI applies the model with the given weight: the same as the Python API.
    with Enhancer(tiny_ckpt) as enhancer:
        np.testing.assert_array_equal(read(out / "odd.png"), enhancer.enhance(read(inputs / "odd.png"), 0.5, 1.0))
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_existing_outputs_are_kept_unless_overwrite(inputs, tmp_path, tiny_ckpt, capsys):
    source = inputs / "odd.png"
    source_bytes = source.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "odd.png").write_bytes(b"previous result")
    rc, _, err = run(capsys, source, "-o", out, "--model", tiny_ckpt)
    assert rc == EXIT_FAILED and "exists (pass --overwrite" in err
    assert (out / "odd.png").read_bytes() == b"previous result"
    rc, _, err = run(capsys, source, "-o", out, "--model", tiny_ckpt, "--overwrite")
    assert rc == EXIT_OK, err
    assert read(out / "odd.png").shape == (37, 53, 3)
    assert source.read_bytes() == source_bytes  # the input is untouched


def test_an_input_is_never_written_over(inputs, tiny_ckpt, capsys):
    source = inputs / "odd.png"
    before = source.read_bytes()
    for extra in ([], ["--overwrite"]):
        rc, _, err = run(capsys, source, "-o", inputs, "--model", tiny_ckpt, "--keep-format", *extra)
        assert rc == EXIT_FAILED and "would replace an input file" in err
    assert source.read_bytes() == before
    # Into the input folder under another name (jpg -> png) is fine.
    rc, _, err = run(capsys, inputs / "photo.jpg", "-o", inputs, "--model", tiny_ckpt)
    assert rc == EXIT_OK, err
    assert read(inputs / "photo.png").shape == (24, 32, 3)


def test_keep_format_and_globs(inputs, tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, str(inputs / "*.jpg"), str(inputs / "deep.*"), "-o", out, "--model", tiny_ckpt,
                          "--keep-format")
    assert rc == EXIT_OK, err
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "photo.jpg"]
    assert read(out / "photo.jpg").shape == (24, 32, 3) and (out / "photo.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_two_inputs_with_one_output_name(inputs, tmp_path, tiny_ckpt, capsys):
    rc, stdout, err = run(capsys, inputs / "odd.png", inputs / "photo.jpg", inputs / "photo.jpg", tmp_path / "b",
                          "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_FAILED and f"{tmp_path / 'b'}: not found" in err
    (tmp_path / "other").mkdir()
    write(tmp_path / "other" / "odd.jpg", pixels((8, 8, 3)))
    rc, stdout, err = run(capsys, inputs / "odd.png", tmp_path / "other" / "odd.jpg", "-o", tmp_path / "out2",
                          "--model", tiny_ckpt)
    assert rc == EXIT_FAILED and "was already written from" in err and "wrote 1 of 2" in stdout


def test_nothing_to_do_and_bad_models_are_usage_errors(tmp_path, tiny_ckpt, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, empty, tmp_path / "missing*.png", "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_USAGE and "no input images" in err and "no image files" in err and "matches no files" in err
    image = write(tmp_path / "a.png", pixels((8, 8, 3)))
    rc, _, err = run(capsys, image, "-o", tmp_path / "out", "--model", tmp_path / "missing.onnx")
    assert rc == EXIT_USAGE and "model not found" in err
    rc, _, err = run(capsys, image, "-o", tmp_path / "out", "--model", tmp_path / "model.bin")
    assert rc == EXIT_USAGE and "model not found" in err
    (tmp_path / "model.bin").write_bytes(tiny_ckpt.read_bytes())
    rc, _, err = run(capsys, image, "-o", tmp_path / "out", "--model", tmp_path / "model.bin")
    assert rc == EXIT_USAGE and "cannot tell the backend" in err and "it is a torch checkpoint: name it model.pth" in err
    rc, _, err = run(capsys, image, "-o", tmp_path / "out", "--model", tiny_ckpt, "--providers", "cuda")
    assert rc == EXIT_USAGE and "--providers do(es) not apply to the torch backend" in err
    assert not (tmp_path / "out").exists()


def test_depth_conversion_for_8_bit_formats():
    deep = np.full((4, 4, 3), 257 * 100, np.uint16)
    assert cv2.imdecode(np.frombuffer(encode_image(deep, ".jpg"), np.uint8), cv2.IMREAD_UNCHANGED).max() == 100
    assert cv2.imdecode(np.frombuffer(encode_image(deep, ".PNG"), np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_python_dash_m_runtime(inputs, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "runtime", str(inputs / ODD_NAME), "-o", str(out),
                             "--model", str(tiny_ckpt), "--tile", "8", "--overlap", "2"],
                            check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert read(out / ODD_NAME).shape == (12, 14, 3)
