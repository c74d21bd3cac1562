"""Odd and bad inputs, one test per case a new user met (issue 12): each gets a clear message and the right exit
status, and nothing gives silent garbage. Real files, the tiny checkpoint and its ONNX export."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from PIL import Image

from contract.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, InputError
from contract.images import read_image
from export import check as export_check
from export import precision as export_precision
from runtime import Enhancer
from runtime.cli import main
from tests.conftest import default_sigint

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def noise(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * np.iinfo(dtype).max).astype(dtype)


def png(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def one_image(tmp_path) -> Path:
    return png(tmp_path / "dark.png", noise((24, 32, 3)))


# 1: IFT weights ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--w-texture", "--w-style"])
@pytest.mark.parametrize("value", ["nan", "inf", "1e30", "-0.5"])
def test_weights_outside_the_range_are_refused_before_inference(flag, value, one_image, tmp_path, tiny_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(one_image), "-o", str(tmp_path / "out"), "--model", str(tiny_ckpt), flag, value])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert flag in err and "finite number in [0, 4]" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["tiny_ckpt", "tiny_onnx"])
def test_the_api_refuses_bad_weights(model, request):
    with Enhancer(request.getfixturevalue(model)) as enhancer:
        image = noise((16, 16, 3))
        for bad in (float("nan"), float("inf"), 1e30, [1.0, float("nan")]):
            with pytest.raises(ValueError, match=r"in \[0, 4\]"):
                enhancer.enhance_batch([image, image], w_texture=bad)
        with pytest.raises(InputError, match="w_style"):
            enhancer.enhance(image, w_style=float("nan"))
        assert enhancer.enhance(image, w_texture=0.0, w_style=4.0).shape == image.shape  # the bounds are accepted


# 2: EXIF orientation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_opencv_displays_it(orientation, tmp_path):
    pil = Image.fromarray(noise((10, 16, 3), seed=orientation))
    exif = pil.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    pil.save(path, exif=exif, quality=95)
    upright = cv2.imread(str(path), cv2.IMREAD_COLOR)  # OpenCV applies the orientation in this mode
    np.testing.assert_array_equal(read_image(path), upright)


def test_a_phone_photo_comes_out_upright(tmp_path, tiny_ckpt, capsys):
    pil = Image.fromarray(noise((20, 36, 3), seed=3))
    exif = pil.getexif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    pil.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    rc, _, _ = run(capsys, tmp_path / "phone.jpg", "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_OK
    written = cv2.imread(str(tmp_path / "out" / "phone.png"), cv2.IMREAD_UNCHANGED)
    assert written.shape == (36, 20, 3)
    with Enhancer(tiny_ckpt) as enhancer:
        np.testing.assert_array_equal(written, enhancer.enhance(cv2.imread(str(tmp_path / "phone.jpg"))))


# 3: the output folder ------------------------------------------------------------------------------------------
def test_an_output_folder_that_is_a_file_is_a_usage_error(one_image, tmp_path, tiny_ckpt, capsys):
    a_file = png(tmp_path / "taken.png", noise((4, 4, 3)))
    for outdir, message in ((a_file, "is a file, not a folder"), (a_file / "sub", "is a file, so no folder")):
        rc, _, err = run(capsys, one_image, "-o", outdir, "--model", tiny_ckpt)
        assert rc == EXIT_USAGE and message in err
        assert "image(s) ->" not in err  # refused before the model was loaded
    assert cv2.imread(str(a_file)).shape == (4, 4, 3)  # untouched


# 4 and 5: export tools on files that are not what they should be ------------------------------------------------
def test_export_check_refuses_what_is_not_an_onnx_graph(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "zero.onnx").write_bytes(b"")
    (tmp_path / "notes.onnx").write_text("hello\n")
    for path, message in ((tmp_path / "zero.onnx", "empty file"), (tmp_path, "folder"),
                          (tiny_ckpt, "torch checkpoint, not an ONNX graph"), (tmp_path / "notes.onnx", "text file"),
                          (tmp_path / "missing.onnx", "not found")):
        assert export_check.main([str(path)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert message in err and "compatibility: OK" not in err


def unrelated_graph(path: Path) -> Path:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))
    return path


def test_export_precision_refuses_other_graphs_and_empty_files(tmp_path, capsys):
    (tmp_path / "zero.onnx").write_bytes(b"")
    for path, message in ((unrelated_graph(tmp_path / "relu.onnx"), "is not a CodeEnhance graph"),
                          (tmp_path / "zero.onnx", "empty file")):
        assert export_precision.main([str(path), "--out", str(tmp_path / "fp16.onnx")]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "fp16.onnx").exists()


def test_export_precision_skips_a_bad_calibration_image_and_marks_the_graph(tiny_onnx, tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "broken.png").write_bytes(b"\x89PNG not really")
    for i in range(2):
        png(calib / f"good_{i}.png", noise((40, 48, 3), seed=i) // 4)
    out = tmp_path / "fp16.onnx"
    assert export_precision.main([str(tiny_onnx), "--out", str(out), "--calib", str(calib), "--calib-count", "2",
                                  "--calib-size", "48", "--backend", "onnxconverter"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "skipped calibration image" in printed and "broken.png" in printed and "2 images from" in printed
    # 14: the FP16 graph says what it is, and the runtime reports it.
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["precision"] == "fp16-mixed"
    with Enhancer(out) as enhancer:
        assert enhancer.info.precision == "fp16-mixed"
    assert export_precision.main([str(out), "--out", str(tmp_path / "again.onnx")]) == EXIT_USAGE
    assert "already fp16-mixed" in capsys.readouterr().err


# 6 and 7: folders --------------------------------------------------------------------------------------------
def test_every_folder_entry_left_out_is_listed(tmp_path, tiny_ckpt, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    png(folder / "good.png", noise((16, 16, 3)))
    frames = [Image.fromarray(noise((16, 16, 3), seed=s)) for s in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "still.gif")
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "sub").mkdir()
    (folder / "readme.txt").write_text("notes\n")
    rc, out, err = run(capsys, folder, "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_PARTIAL
    assert "wrote 2 of 3 image(s)" in out  # good.png and still.gif; anim.gif refused
    assert "anim.gif: has 3 frames" in err
    assert "dangling.png: broken symbolic link" in err and "loop.png: symbolic link loop" in err
    assert "sub: a folder (not searched" in err and "readme.txt: not an image file suffix (.txt)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png", "still.png"]


def test_a_bad_file_never_locks_out_a_good_one_with_the_same_output_name(tmp_path, tiny_ckpt, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff corrupt")
    png(folder / "photo.png", noise((16, 20, 3)))
    rc, out, err = run(capsys, folder, "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_PARTIAL and "wrote 1 of 2" in out
    assert "photo.jpg: not a readable image" in err
    assert cv2.imread(str(tmp_path / "out" / "photo.png")).shape == (16, 20, 3)


# 8, 9, 11: models and options --------------------------------------------------------------------------------
def test_model_files_are_named_for_what_they_are(one_image, tmp_path, tiny_ckpt, tiny_onnx, capsys):
    disguised = tmp_path / "model.pth"
    disguised.write_bytes(tiny_onnx.read_bytes())
    cases = [
        (("--model", disguised), "is an ONNX graph, not a torch checkpoint for the torch backend; rename it to model.onnx"),
        (("--model", tiny_onnx, "--backend", "torch"), "is an ONNX graph, not a torch checkpoint"),
        (("--model", tmp_path), "is a folder; name the model file"),
        (("--model", tiny_onnx, "--fp16"), "--precision/--fp16 do(es) not apply to the onnxruntime backend; it applies to: torch, openvino"),
        (("--model", tiny_ckpt, "--device", "bogus"), "'bogus' is not a device"),
    ]
    for argv, message in cases:
        rc, _, err = run(capsys, one_image, "-o", tmp_path / "out", *argv)
        assert rc == EXIT_USAGE and message in err, err


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_must_be_positive(threads, one_image, tmp_path, tiny_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(one_image), "-o", str(tmp_path / "out"), "--model", str(tiny_ckpt), "--threads", threads])
    assert exit_info.value.code == EXIT_USAGE and "--threads: must be >= 1" in capsys.readouterr().err


def test_a_missing_model_is_reported_even_when_every_output_exists(one_image, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    png(tmp_path / "out" / "dark.png", noise((4, 4, 3)))
    rc, _, err = run(capsys, one_image, "-o", tmp_path / "out", "--model", tmp_path / "missing.onnx")
    assert rc == EXIT_USAGE and "model not found" in err


# 10: Ctrl-C ----------------------------------------------------------------------------------------------------
def test_ctrl_c_prints_the_summary_and_exits_130(tmp_path, tiny_ckpt):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(60):
        png(folder / f"{i:02d}.png", noise((160, 160, 3), seed=i))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "runtime", str(folder), "-o", str(out), "--model", str(tiny_ckpt)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    while not (out.exists() and any(p.suffix == ".png" for p in out.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "no output before the interrupt"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    written = sorted(p.name for p in out.iterdir())
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert f"wrote {len(written)} of 60 image(s)" in stdout and "interrupted" in stderr
    assert "Traceback" not in stderr and all(not name.startswith(".") for name in written)  # no partial files


# 12 and 13: large, gray + alpha and float images ----------------------------------------------------------------
def test_tiling_is_announced_and_progress_moves_per_tile(tmp_path, tiny_ckpt, capsys):
    png(tmp_path / "wide.png", noise((100, 150, 3)))
    rc, _, err = run(capsys, tmp_path / "wide.png", "-o", tmp_path / "out", "--model", tiny_ckpt,
                     "--tile", "64", "--overlap", "8")
    assert rc == EXIT_OK and "wide.png: 150x100 is enhanced in 6 tiles of 64x64 (above --tile 64)" in err
    with Enhancer(tiny_ckpt, max_pixels=64 * 64) as enhancer:
        calls = []
        enhancer.enhance(noise((100, 150, 3)), progress=lambda done, total: calls.append((done, total)))
        assert calls == [(i, len(calls)) for i in range(1, len(calls) + 1)] and len(calls) > 1


def test_gray_alpha_stays_gray_alpha(tmp_path, tiny_ckpt, capsys):
    gray_alpha = np.dstack([noise((14, 18), seed=1), noise((14, 18), seed=2)])
    Image.fromarray(gray_alpha, mode="LA").save(tmp_path / "ga.png")
    rc, _, _ = run(capsys, tmp_path / "ga.png", "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_OK
    with Image.open(tmp_path / "out" / "ga.png") as written:
        assert written.mode == "LA"
        np.testing.assert_array_equal(np.asarray(written)[..., 1], gray_alpha[..., 1])  # alpha kept


def test_float_values_above_one_are_clipped_with_a_note(tmp_path, tiny_ckpt, capsys):
    hdr = np.random.default_rng(0).random((12, 16, 3)).astype(np.float32) * 3
    assert cv2.imwrite(str(tmp_path / "hdr.tiff"), hdr)
    rc, _, err = run(capsys, tmp_path / "hdr.tiff", "-o", tmp_path / "out", "--model", tiny_ckpt)
    assert rc == EXIT_OK and "outside [0,1] were clipped" in err
    nan = hdr.copy()
    nan[0, 0, 0] = np.nan
    with Enhancer(tiny_ckpt) as enhancer, pytest.raises(ValueError, match="NaN"):
        enhancer.enhance(nan)


# 15: PIL images -------------------------------------------------------------------------------------------------
def test_pil_images_are_rgb(tiny_ckpt):
    rgb = noise((16, 20, 3), seed=4)
    with Enhancer(tiny_ckpt) as enhancer:
        from_pil = enhancer.enhance(Image.fromarray(rgb))
        assert isinstance(from_pil, Image.Image) and from_pil.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(from_pil), enhancer.enhance(rgb[..., ::-1].copy())[..., ::-1])
        gray = enhancer.enhance(Image.fromarray(rgb[..., 0]))
        assert gray.mode == "L" and gray.size == (20, 16)

