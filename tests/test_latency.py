"""benchmarks/latency.py: the whole harness on a tiny configuration (one run, shared by the checks below), plus
its pure helpers. The run exports the tiny model once (~30 s on 2 shared cores) and measures torch and
onnxruntime in fresh processes; tensorrt and torch-fp16 must come back as skipped with a reason on a CPU machine.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from benchmarks.harness import analysis, compare, inputs, specs, worker
from tests.conftest import REPO

SIZE = "32x48"
# One thread: on a shared 2-core machine, two OpenMP threads in torch wait on each other for whole scheduler
# slices when a neighbour's process holds a core (seen here: 40 ms calls took seconds); the test stays fast.
TINY_RUN = ["--preset", "tiny", "--sizes", SIZE, "--iters", "2", "--warmup", "0", "--threads", "1",
            "--backends", "torch,onnxruntime,openvino-bf16,tensorrt,torch-fp16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_ckpt):
    out = tmp_path_factory.mktemp("latency")
    proc = subprocess.run([sys.executable, "benchmarks/latency.py", *TINY_RUN, "--ckpt", str(tiny_ckpt),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def row(results, backend):
    return results["backends"][backend]["sizes"][SIZE]


def test_latency_fields_are_sane(tiny_run):
    _, results, _ = tiny_run
    for name in ("torch", "onnxruntime"):
        r = row(results, name)
        assert r["status"] == "ok"
        lat = r["latency_ms"]
        assert lat["iters"] == 2 and len(lat["samples"]) == 2
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["load_s"] > 0 and r["first_infer_s"] > 0
        assert r["first_call_s"] == pytest.approx(r["load_s"] + r["first_infer_s"])
        assert r["throughput"]["images_per_s"] > 0 and r["throughput"]["megapixels_per_s"] > 0
        assert r["padded"] == [64, 64] and r["batch"] == 1
        mem = r["memory"]
        # A fresh process: well above the bare interpreter, well below a parent holding torch and the exports.
        assert 0 < mem["baseline_rss_mb"] <= mem["peak_rss_mb"] < 4096
        assert mem["gpu"] is None  # CPU run
        assert r["speedup_vs_reference"] > 0
    assert row(results, "torch")["speedup_vs_reference"] == 1.0


def test_onnxruntime_worker_does_not_load_torch(tiny_run):
    _, results, _ = tiny_run
    # torch alone adds a few hundred MB; the ORT process must not carry it.
    assert row(results, "onnxruntime")["memory"]["baseline_rss_mb"] < row(results, "torch")["memory"]["baseline_rss_mb"]


def test_openvino_bf16_row(tiny_run):
    _, results, _ = tiny_run
    if importlib.util.find_spec("openvino") is None:
        assert "OpenVINO is not installed" in row(results, "openvino-bf16")["reason"]
        return
    r = row(results, "openvino-bf16")
    assert r["status"] == "ok" and results["backends"]["openvino-bf16"]["precision"] == "bf16-mixed"
    assert r["memory"]["baseline_rss_mb"] < row(results, "torch")["memory"]["baseline_rss_mb"]  # no torch loaded
    summary = r["fidelity"]["summary"]
    assert summary["psnr_min"] > 25 and summary["max_err_8bit"] < 128  # bf16 storage rounding, islands fp32


def test_fidelity_against_the_reference(tiny_run):
    _, results, _ = tiny_run
    ref = row(results, "torch")["fidelity"]
    assert ref["summary"]["psnr_mean"] == math.inf and ref["summary"]["psnr_min"] == math.inf
    assert ref["summary"]["code_agreement_min"] == 1.0 and ref["summary"]["max_err_8bit"] == 0
    assert ref["summary"]["ssim_min"] == pytest.approx(1.0)
    ort = row(results, "onnxruntime")["fidelity"]
    assert len(ort["per_image"]) == len(results["images"]) == 3
    for image in ort["per_image"]:
        assert image["psnr"] > 40 and image["ssim"] > 0.99 and image["nonfinite"] == 0
        assert image["max_err_8bit"] <= 2
        assert image["code_agreement"] is not None and image["code_agreement"] > 0.9  # the graph has `codes`
    assert ort["summary"]["psnr_min"] > 40


def test_unavailable_backends_are_skipped_with_a_reason(tiny_run):
    _, results, stdout = tiny_run
    for name in ("tensorrt", "torch-fp16"):
        entry = results["backends"][name]
        assert entry["status"] == "skipped" and "CUDA" in entry["reason"] and entry["sizes"] == {}
    assert "## Not measured" in stdout and "tensorrt" in stdout


def test_report_files_and_machine(tiny_run):
    out, results, stdout = tiny_run
    markdown = (out / "results.md").read_text()
    assert markdown in stdout and "| torch | fp32 | 32x48 (64x64) |" in markdown
    assert results["command"].startswith("python benchmarks/latency.py --preset tiny")
    assert results["reference"] == "torch"
    m = results["machine"]
    assert m["cpu"] and m["cpu_count"] >= 1 and m["versions"]["python"]
    for lib in ("torch", "onnxruntime", "onnx", "numpy"):
        assert lib in m["versions"]
    scaling = results["backends"]["torch"]["scaling"]
    assert scaling["points"] == 1 and scaling["latency_ms_per_mp"] is None  # one size: no fit, said so
    pytest.importorskip("matplotlib")
    assert sorted(p.name for p in out.glob("*.png")) == ["fidelity.png", "latency.png"]


def test_bad_arguments_exit_2():
    proc = subprocess.run([sys.executable, "benchmarks/latency.py", "--sizes", "256by256"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "256by256" in proc.stderr
    proc = subprocess.run([sys.executable, "benchmarks/latency.py", "--backends", "torch,tensorflow"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "tensorflow" in proc.stderr


# ----------------------------------------------------------------------------------------------- helpers


def test_sizes_and_backends_parse():
    assert specs.parse_sizes("256x256,720p,1080p,256x256") == [(256, 256), (720, 1280), (1080, 1920)]
    with pytest.raises(ValueError):
        specs.parse_size("0x5")
    assert specs.parse_backends("onnxruntime") == ["torch", "onnxruntime"]  # the reference always runs
    assert specs.skip_reason(specs.BACKENDS["onnxruntime"], "cpu", False, ["CPUExecutionProvider"]) is None
    cpu_only = ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in specs.skip_reason(specs.BACKENDS["onehot"], "cuda", True, cpu_only)


def test_statistics_and_scaling_fit():
    stats = analysis.latency_stats([0.3, 0.1, 0.2, 0.4])
    assert stats["min"] == pytest.approx(100) and stats["max"] == pytest.approx(400)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    fit = analysis.fit_line([0.5, 1.0, 2.0], [60.0, 110.0, 210.0])
    assert fit["slope"] == pytest.approx(100.0) and fit["intercept"] == pytest.approx(10.0)
    assert analysis.fit_line([1.0, 1.0], [2.0, 3.0]) is None
    assert analysis.throughput(2, (1000, 500), 500.0) == {"images_per_s": 4.0, "megapixels_per_s": 2.0}


def test_batches_cover_every_image():
    plan = worker.batch_plan(5, 2)
    assert [list(b) for b in plan] == [[0, 1], [2, 3], [4, 0]]


def test_compare_counts_nonfinite_and_code_disagreement():
    rng = np.random.default_rng(0)
    ref = rng.random((1, 3, 16, 16)).astype(np.float32)
    out = ref.copy()
    out[0, 0, 0, 0] = np.nan
    codes = np.zeros((1, 1, 4, 4), np.int32)
    other = codes.copy()
    other[0, 0, 0, :2] = 7
    rows = compare.compare_outputs(["a"], {"enhanced": out, "codes": other}, {"enhanced": ref, "codes": codes})
    assert rows[0]["nonfinite"] == 1 and rows[0]["code_agreement"] == pytest.approx(14 / 16)
    assert math.isfinite(rows[0]["psnr"])
    same = compare.summarize(compare.compare_outputs(["a"], {"enhanced": ref}, {"enhanced": ref}))
    assert same["psnr_mean"] == math.inf and same["code_agreement_mean"] is None


def test_real_images_are_fitted_to_each_size(tmp_path):
    photo = (np.random.default_rng(0).random((60, 100, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    names, arrays = inputs.benchmark_images([(32, 32), (40, 80)], tmp_path, count=4)
    assert names == ["a.png"]
    assert arrays[(32, 32)].shape == (1, 3, 32, 32) and arrays[(40, 80)].shape == (1, 3, 40, 80)
    assert arrays[(32, 32)].dtype == np.float32 and 0 <= arrays[(32, 32)].min() <= arrays[(32, 32)].max() <= 1


def test_artifacts_reuse_a_graph_only_from_the_same_exporting_code(tmp_path, tiny_ckpt, monkeypatch):
    """--artifacts: a graph exported by this toolkit is reused; one left by a toolkit whose export code differs
    (another exporter fingerprint) is not, even for the same checkpoint."""
    import export.onnx
    from benchmarks.harness.artifacts import Artifacts

    first = Artifacts(tmp_path, ckpt=tiny_ckpt, preset="tiny", log=lambda *_: None)
    graph = first.get("onnx")
    assert export.onnx.exporter_fingerprint() in graph.name
    again = Artifacts(tmp_path, ckpt=tiny_ckpt, preset="tiny", log=lambda *_: None)
    assert again.get("onnx") == graph and graph.name in again.reused

    monkeypatch.setattr(export.onnx, "exporter_fingerprint", lambda: "0123456789ab")  # as after an upgrade
    upgraded = Artifacts(tmp_path, ckpt=tiny_ckpt, preset="tiny", log=lambda *_: None)
    fresh = upgraded.get("onnx")
    assert fresh != graph and fresh.is_file() and not upgraded.reused
