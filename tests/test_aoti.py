"""The AOTInductor package (export/aoti.py) and its backend (runtime/aoti_backend.py), on CPU, tiny preset.

One package with one static bucket (padded 96x96) is compiled per session (~2 min on 2 cores); photos are downscaled
to a longest side of 94, so most LIME photos land in it. Needs a C++ compiler (skipped without one).
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import formats
from contract.aoti_package import META_NAME, bucket_for, check_package, read_package_meta
from contract.errors import InputError
from contract.files import file_sha256
from export.aoti import find_compiler, main as aoti_main
from contract.errors import BadArtifactError

BUCKET = (96, 96)
LONGEST = 94


@pytest.fixture(scope="module")
def tiny_pt2(tiny_ckpt, tmp_path_factory) -> Path:
    if find_compiler() is None:
        pytest.skip("no C++ compiler (c++/g++/clang++ or $CXX): AOTInductor cannot build a package here")
    from export.aoti import export_aoti

    return export_aoti(tiny_ckpt, tmp_path_factory.mktemp("aoti") / "tiny.pt2", sizes=[(BUCKET[0] - 1, BUCKET[1] - 1)],
                       max_batch=4)


@pytest.fixture(scope="module")
def backends(tiny_pt2, tiny_ckpt):
    from runtime.aoti_backend import AotiBackend
    from runtime.torch_backend import TorchBackend

    with AotiBackend(tiny_pt2) as aoti, TorchBackend(tiny_ckpt) as eager:
        yield aoti, eager


def bucket_photos(lowlight_dir, count=4):
    from codeenhance.padding import padded_size
    from export.fidelity import list_images, load_rgb

    photos = []
    for path in list_images(lowlight_dir):
        rgb = load_rgb(path, LONGEST)
        if (padded_size(rgb.shape[0]), padded_size(rgb.shape[1])) == BUCKET:
            photos.append((path.name, np.ascontiguousarray(rgb.transpose(2, 0, 1))))
        if len(photos) == count:
            return photos
    pytest.skip(f"fewer than {count} photos whose padded size is {BUCKET} at longest side {LONGEST}")


def test_package_matches_eager_on_photos(backends, lowlight_dir, tiny_model):
    """8-bit error <= 1 against eager, code agreement >= 99.9% over all positions. Where a code differs (a float32
    near-tie), the eager model is re-run with the package's codes (export.verify, as the ONNX verification does):
    the IFT statistics are global, so one flipped code moves every pixel slightly and a spatial mask cannot
    isolate it; the flipped codes must be near-ties."""
    from export.fidelity import to_8bit
    from export.verify import run_torch_with_codes

    aoti, eager = backends
    same = total = 0
    for name, chw in bucket_photos(lowlight_dir):
        # a batch of 2 with per-image weights, then the first image alone (batch 1 is its own export case)
        x = np.stack([chw, chw])
        wt, ws = np.array([1.0, 0.5], np.float32), np.array([1.0, 1.5], np.float32)
        for batch in (slice(0, 2), slice(0, 1)):
            got, ref = aoti.infer(x[batch], wt[batch], ws[batch]), eager.infer(x[batch], wt[batch], ws[batch])
            assert got.enhanced.shape == ref.enhanced.shape == x[batch].shape
            assert got.codes.shape == ref.codes.shape
            same += int((got.codes == ref.codes).sum())
            total += got.codes.size
            reference = ref.enhanced
            if (got.codes != ref.codes).any():
                inputs = {"image": x[batch], "w_texture": wt[batch], "w_style": ws[batch]}
                reference, gaps = run_torch_with_codes(tiny_model, inputs, got.codes.reshape(-1), ref.codes.reshape(-1))
                assert max(gaps) <= 1e-4, f"{name}: a changed code is not a near-tie (relative gaps {gaps})"
            error = np.abs(to_8bit(got.enhanced) - to_8bit(reference)).max()
            assert error <= 1, f"{name}: 8-bit error {error} (with the same codes)"
    assert same / total >= 0.999, f"code agreement {same / total:.4%} over {total} positions"


def test_bucket_selection(backends):
    meta = {"pad_multiple": 32, "models": {"b96x96": {"padded": [96, 96]}, "b288x288": {"padded": [288, 288]}}}
    assert bucket_for(meta, 64, 95) == "b96x96"  # 64..95 pad to 96
    assert bucket_for(meta, 95, 64) == "b96x96"
    assert bucket_for(meta, 256, 287) == "b288x288"
    assert bucket_for(meta, 96, 96) is None  # 96 pads to 128: never run in a bigger bucket
    assert bucket_for(meta, 63, 80) is None  # pads to 64: a smaller image is not run in a bigger bucket either
    with_dynamic = {**meta, "models": {**meta["models"], "dynamic": {"padded": None}}}
    assert bucket_for(with_dynamic, 500, 33) == "dynamic"
    assert bucket_for(with_dynamic, 70, 94) == "b96x96"  # a bucket is preferred
    assert bucket_for(with_dynamic, 500, 3) is None  # the dynamic program's runtime asserts refuse sides < 32

    aoti, _ = backends
    assert aoti.bucket(70, 94) == "b96x96"
    x = np.random.default_rng(0).random((1, 3, 62, 94), dtype=np.float32)
    with pytest.raises(InputError, match=r"62x94 \(padded 64x96\).*96x96 \(inputs 64\.\.95 x 64\.\.95\).*--sizes"):
        aoti.infer(x, np.ones(1, np.float32), np.ones(1, np.float32))
    info = aoti.describe()
    assert (info.name, info.precision, info.device, info.max_hw, info.max_batch) == ("aoti", "fp32", "cpu", (95, 95), 4)


def test_metadata_inside_package(tiny_pt2, tiny_ckpt):
    assert formats.detect(tiny_pt2) == formats.TORCH_PACKAGE
    meta = read_package_meta(tiny_pt2)
    assert meta["checkpoint_sha256"] == file_sha256(tiny_ckpt)
    assert (meta["precision"], meta["device"], meta["torch_version"]) == ("fp32", "cpu", torch.__version__)
    assert meta["models"] == {"b96x96": {"padded": [96, 96]}}
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert check_package(tiny_pt2, torch_version=torch.__version__, device="cpu",
                         checkpoint_sha256=file_sha256(tiny_ckpt)) == {**meta, "integrity": "payload hash verified"}


def with_meta(src: Path, dst: Path, edit) -> Path:
    """A copy of the package with its metadata edited (``edit(meta)`` -> meta, or None to drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("extra/" + META_NAME):
                meta = edit(json.loads(data))
                if meta is None:
                    continue
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "torch_version": "2.9.1+cu128"}, r"torch_version is '2\.9\.1\+cu128' in its record.*tied to the torch release"),
    (lambda m: {**m, "device": "cuda", "compute_capability": "9.0"}, r"device is 'cuda' in its record but 'cpu' here"),
    (lambda m: {**m, "cpu_capability": "AVX512"} if torch.backends.cpu.get_cpu_capability() != "AVX512" else
     {**m, "cpu_capability": "NEON"}, r"CPU"),
    (lambda m: None, r"no codeenhance\.json metadata"),
    (lambda m: {**m, "schema": 99}, r"not a CodeEnhance package of schema 1"),
])
def test_stale_or_foreign_package_refused(tiny_pt2, tmp_path, edit, message):
    from runtime.aoti_backend import AotiBackend

    stale = with_meta(tiny_pt2, tmp_path / "stale.pt2", edit)
    with pytest.raises(BadArtifactError, match=message):  # exit 2: rebuild it
        AotiBackend(stale).load()


def test_other_checkpoint_refused(tiny_pt2):
    from runtime.aoti_backend import AotiBackend

    with pytest.raises(BadArtifactError, match="different checkpoint"):
        AotiBackend(tiny_pt2, checkpoint_sha256="0" * 64).load()


def test_cli_refuses_before_compiling(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert aoti_main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--precision", "fp16"]) == 2
    assert "needs --device cuda" in capsys.readouterr().err and not out.exists()
    assert aoti_main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--sizes", "256by256"]) == 2
    assert "not HxW" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"keep")
    assert aoti_main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--sizes", "64x64"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 packages are CUDA only (CPU fp16 kernels are emulated "
                    "and slower than fp32, so export.aoti refuses --precision fp16 on CPU); no CUDA GPU here")
def test_fp16_package_on_cuda(tiny_ckpt, tmp_path, lowlight_dir):  # pragma: no cover - needs a GPU
    from export.aoti import export_aoti
    from export.fidelity import code_agreement, psnr
    from runtime.aoti_backend import AotiBackend
    from runtime.torch_backend import TorchBackend

    pkg = export_aoti(tiny_ckpt, tmp_path / "fp16.pt2", device="cuda", precision="fp16", sizes=[(95, 95)], max_batch=2)
    with AotiBackend(pkg, device="cuda") as aoti, TorchBackend(tiny_ckpt) as eager:
        assert aoti.describe().precision == "fp16-mixed"
        psnrs, agreements = [], []
        for _, chw in bucket_photos(lowlight_dir):
            x, w = chw[None], np.ones(1, np.float32)
            got, ref = aoti.infer(x, w, w), eager.infer(x, w, w)
            psnrs.append(psnr(got.enhanced, ref.enhanced))
            agreements.append(code_agreement(got.codes, ref.codes))
    assert np.mean(psnrs) >= 45 and min(agreements) >= 0.995, (psnrs, agreements)


def test_corrupt_package_refused(tiny_pt2, tmp_path):
    from runtime.aoti_backend import AotiBackend

    with AotiBackend(tiny_pt2) as backend:
        assert backend.meta["integrity"] == "payload hash verified"
    flipped = tmp_path / "flipped.pt2"
    data = bytearray(tiny_pt2.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4096):
        data[i] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(BadArtifactError, match=r"flipped\.pt2 is corrupt"):
        AotiBackend(flipped).load()
    # Rewritten with valid CRCs but one compiled file changed: only the recorded payload hash can tell.
    edited = tmp_path / "edited.pt2"
    with zipfile.ZipFile(tiny_pt2) as zin, zipfile.ZipFile(edited, "w") as zout:
        largest = max(zin.infolist(), key=lambda i: i.file_size).filename
        for item in zin.infolist():
            body = zin.read(item)
            zout.writestr(item, body[:-1] + bytes([body[-1] ^ 1]) if item.filename == largest else body)
    with pytest.raises(BadArtifactError, match=r"edited\.pt2 is corrupt.*changed on disk"):
        AotiBackend(edited).load()
