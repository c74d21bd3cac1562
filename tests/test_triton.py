"""Triton serving: the repository's configs against Triton's schema, and a real tritonserver on localhost.

The server is the one in the nvidia-pytriton wheel (the [serve] extra); its tests skip with the reason when that
or tritonclient is missing. Each server runs the tiny ONNX model on free local ports, so these tests stay short.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.backend import BackendError

from export.triton import ONNX_MODEL, PYTHON_MODEL, TRT_MODEL, RepositoryError, Serving, write_repository
from tests.conftest import need_triton_server

REPO = Path(__file__).resolve().parents[1]

MAX_HW = (160, 192)  # small, so that "beyond the configured maximum" is cheap to send


def model_config_pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2",
                               reason="tritonclient[grpc] not installed (pip install 'codeenhance-deploy[serve]')")


def parse_config(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())


def fake_engine(folder: Path) -> Path:
    """An engine file with the sidecar export.tensorrt writes (the bytes are not an engine: only configs here)."""
    engine = folder / "model.plan"
    engine.write_bytes(b"not a real engine")
    sidecar = {"tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
               "precision": "fp16-mixed", "io": {"inputs": ["image", "w_texture", "w_style"], "outputs": ["enhanced"]},
               "shapes": {"image": {"min": [1, 3, 32, 32], "opt": [1, 3, 720, 1280], "max": [4, 3, 1088, 1920]}}}
    (folder / "model.plan.json").write_text(json.dumps(sidecar))
    return engine


def test_repository_configs_follow_tritons_schema(tiny_onnx, tmp_path):
    pb2 = model_config_pb2()
    engine = fake_engine(tmp_path)
    repo = tmp_path / "repo"
    names = write_repository(tiny_onnx, repo, serving=Serving(max_batch=8, instances=2, delay_us=500), engine=engine)
    assert names == [PYTHON_MODEL, ONNX_MODEL, TRT_MODEL]
    configs = {name: parse_config(repo / name / "config.pbtxt") for name in names}  # unknown fields fail here
    for name, config in configs.items():
        assert config.name == name
        assert [i.name for i in config.input] == ["image", "w_texture", "w_style"]
        assert [o.name for o in config.output] == ["enhanced"]
        assert list(config.input[0].dims) == [3, -1, -1]
        assert list(config.input[1].dims) == [1] and config.input[1].HasField("reshape")
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
        assert config.instance_group[0].count == 2
    python, onnx_cfg, trt = configs[PYTHON_MODEL], configs[ONNX_MODEL], configs[TRT_MODEL]
    assert python.backend == "python" and not python.platform and python.max_batch_size == 8
    assert python.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert python.parameters["max_hw"].string_value == "1088x1920"
    assert (repo / PYTHON_MODEL / "1" / "model.py").is_file() and (repo / PYTHON_MODEL / "1" / "model.onnx").is_file()
    assert onnx_cfg.platform == "onnxruntime_onnx"
    accelerator = onnx_cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP32"
    assert accelerator.parameters["trt_profile_max_shapes"] == "image:8x3x1088x1920,w_texture:8,w_style:8"
    assert onnx_cfg.model_warmup[0].inputs["image"].dims == [3, 720, 1280]
    assert trt.platform == "tensorrt_plan" and trt.cc_model_filenames["9.0"] == "model.plan"
    assert trt.max_batch_size == 4  # narrowed to the engine's profile
    assert (repo / TRT_MODEL / "1" / "model.plan.json").is_file()
    readme = (repo / "README.md").read_text()
    assert "TensorRT 10.13.0" in readme and "same shape" in readme

    no_batching = write_repository(tiny_onnx, tmp_path / "nb", serving=Serving(dynamic_batching=False))
    assert not parse_config(tmp_path / "nb" / no_batching[0] / "config.pbtxt").HasField("dynamic_batching")


def test_repository_refuses_bad_inputs(tiny_onnx, tmp_path):
    engine = fake_engine(tmp_path)
    (tmp_path / "model.plan.json").unlink()
    with pytest.raises(RepositoryError, match="no sidecar"):
        write_repository(tiny_onnx, tmp_path / "r1", engine=engine)
    write_repository(tiny_onnx, tmp_path / "r2")
    with pytest.raises(RepositoryError, match="--overwrite"):
        write_repository(tiny_onnx, tmp_path / "r2")
    write_repository(tiny_onnx, tmp_path / "r2", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(RepositoryError, match="has no .codeenhance-manifest.json.*notes.txt"):
        write_repository(tiny_onnx, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep"
    with pytest.raises(RepositoryError, match="graph contract|not a valid ONNX"):
        bogus = tmp_path / "bogus.onnx"
        bogus.write_bytes(b"\x08\x07garbage")
        write_repository(bogus, tmp_path / "r3")


# --- a real server -------------------------------------------------------------------------------------------

def start_server(repo: Path, **kwargs):
    need_triton_server()
    from runtime.serve import TritonServer, free_port

    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), log=None, ready_timeout=240, **kwargs)
    return server.start()


@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(tiny_onnx, path, serving=Serving(max_batch=4, max_hw=MAX_HW, delay_us=20000), threads=1)
    return path


@pytest.fixture(scope="module")
def server(repo):
    server = start_server(repo)
    yield server
    server.stop()


def photos(lowlight_dir: Path, sizes) -> list[np.ndarray]:
    import cv2

    from contract.images import is_image_path, read_image

    files = [p for p in sorted(lowlight_dir.rglob("*")) if p.is_file() and is_image_path(p)]
    return [cv2.resize(read_image(files[i % len(files)]), (w, h), interpolation=cv2.INTER_AREA)
            for i, (h, w) in enumerate(sizes)]


def test_triton_matches_the_in_process_enhancer(server, tiny_onnx, lowlight_dir):
    from runtime import Enhancer
    from runtime.triton_backend import TritonBackend

    images = photos(lowlight_dir, [(96, 128), (77, 150), (96, 128), (160, 33), (45, 192)])
    w_texture, w_style = [1.0, 0.5, 2.0, 0.0, 4.0], [1.0, 1.5, 0.25, 1.0, 3.0]
    with Enhancer(backend=TritonBackend(server.model_url(PYTHON_MODEL)), batch=2) as remote, \
            Enhancer(tiny_onnx, batch=2) as local:
        assert remote.info.max_hw == MAX_HW and remote.info.max_batch == 4
        served = remote.enhance_batch(images, w_texture, w_style)
        expected = local.enhance_batch(images, w_texture, w_style)
        gray = remote.enhance(images[0][..., 1])  # image-level work stays on the client
        assert gray.shape == images[0].shape[:2]
    for got, want in zip(served, expected):
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def raw_infer(server, image, w_texture, w_style, dtype="FP32"):
    """Send tensors as they are (no client-side checks); returns the output or the server's error message."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.url, network_timeout=120)
    try:
        inputs = []
        for name, value in (("image", image), ("w_texture", w_texture), ("w_style", w_style)):
            tensor = http.InferInput(name, list(value.shape), dtype if name == "image" else "FP32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return client.infer(PYTHON_MODEL, inputs).as_numpy("enhanced")
    except InferenceServerException as e:
        return str(e)
    finally:
        client.close()


def test_a_url_naming_a_version_not_served_says_which_are(server):
    from runtime.triton_backend import TritonBackend

    with pytest.raises(BackendError, match=rf"version 7 of model '{PYTHON_MODEL}' is not served .*ready versions: 1"):
        TritonBackend(f"triton://{server.url}/{PYTHON_MODEL}/7", connect_timeout=20).load()
    with TritonBackend(f"triton://{server.url}/{PYTHON_MODEL}/1", connect_timeout=20) as versioned:
        assert versioned.describe().max_batch == 4


def test_bad_requests_get_errors_and_the_server_keeps_serving(server):
    ok = np.full((1, 1), 1.0, np.float32)
    image = np.random.default_rng(0).random((1, 3, 48, 64), dtype=np.float32)
    bad = {
        "float64 image": (image.astype(np.float64), ok, ok, "FP64"),
        "4 channels": (np.zeros((1, 4, 48, 64), np.float32), ok, ok, "FP32"),
        "rank 3": (np.zeros((3, 48, 64), np.float32), ok, ok, "FP32"),
        "NaN weight": (image, np.full((1, 1), np.nan, np.float32), ok, "FP32"),
        "weight 5": (image, ok, np.full((1, 1), 5.0, np.float32), "FP32"),
        "NaN pixel": (np.where(image > 0.5, np.nan, image).astype(np.float32), ok, ok, "FP32"),
        "beyond the maximum": (np.zeros((1, 3, MAX_HW[0] + 1, 64), np.float32), ok, ok, "FP32"),
    }
    expect = {"NaN weight": "w_texture must be finite", "weight 5": "w_style must be finite",
              "NaN pixel": "NaN", "beyond the maximum": "exceeds the largest size"}
    for what, (x, wt, ws, dtype) in bad.items():
        answer = raw_infer(server, x, wt, ws, dtype)
        assert isinstance(answer, str), f"{what}: the server accepted it"
        assert expect.get(what, "") in answer, (what, answer)
    # A bad request batched with good ones fails alone (same size: the dynamic batcher may join them).
    results = {}
    requests = {"good-1": (image, ok, ok), "bad": (image, np.full((1, 1), np.nan, np.float32), ok), "good-2": (image, ok, ok)}
    threads = [threading.Thread(target=lambda k=k, v=v: results.__setitem__(k, raw_infer(server, *v)))
               for k, v in requests.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["bad"], str)
    assert isinstance(results["good-1"], np.ndarray) and np.array_equal(results["good-1"], results["good-2"])
    assert server.process.poll() is None


def test_serve_reports_a_taken_port_and_a_model_that_fails(repo, tmp_path):
    from runtime.serve import ServeError, TritonServer

    busy = start_server(repo)
    try:
        with pytest.raises(ServeError, match=f"port {busy.http_port} \\(HTTP\\) is already in use"):
            TritonServer(repo, http_port=busy.http_port, grpc_port=busy.grpc_port + 1, log=None).start()
    finally:
        busy.stop()
    broken = tmp_path / "broken"
    write_repository(Path(repo / PYTHON_MODEL / "1" / "model.onnx"), broken, serving=Serving(max_hw=MAX_HW))
    (broken / PYTHON_MODEL / "1" / "model.onnx").write_bytes(b"\x08\x07 not a graph")
    (broken / ".codeenhance-manifest.json").unlink()  # as if made by hand: the server itself finds the bad model
    with pytest.raises(ServeError, match=f"model '{PYTHON_MODEL}' failed to load"):
        start_server(broken)


def test_server_killed_mid_run_fails_each_image_by_name_and_writes_nothing_partial(repo, tmp_path, lowlight_dir):
    from runtime import Enhancer
    from runtime.cli import Job, Run, enhance_jobs
    from runtime.triton_backend import TritonBackend

    server = start_server(repo)
    try:
        calls = []

        class KilledAfterFirst(TritonBackend):
            def _infer(self, images, w_texture, w_style):
                calls.append(images.shape)
                if len(calls) == 2:
                    server.kill()
                return super()._infer(images, w_texture, w_style)

        sources = tmp_path / "in"
        sources.mkdir()
        import cv2

        for i, image in enumerate(photos(lowlight_dir, [(64, 80), (70, 90), (64, 80), (50, 60)])):
            cv2.imwrite(str(sources / f"photo{i}.png"), image)
        outdir = tmp_path / "out"
        outdir.mkdir()
        jobs = [Job(p, outdir / p.name) for p in sorted(sources.iterdir())]
        args = argparse.Namespace(batch=1, w_texture=1.0, w_style=1.0)
        run = Run(inputs=len(jobs))
        with Enhancer(backend=KilledAfterFirst(server.model_url(PYTHON_MODEL))) as enhancer:
            enhance_jobs(enhancer, jobs, args, run)
    finally:
        server.stop()
    assert run.written == 1
    assert sorted(p.name for p in outdir.iterdir()) == ["photo0.png"]  # no temporary or partial files
    failed = dict(run.problems)
    assert sorted(Path(f).name for f in failed) == ["photo1.png", "photo2.png", "photo3.png"]
    for reason in failed.values():
        assert "triton" in reason and "image(s) of" in reason


def test_overwrite_replaces_only_what_the_exporter_wrote(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    written = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    (repo / "README.md").write_text("the operator's own notes")  # ours, edited: still ours to replace
    write_repository(tiny_onnx, repo, overwrite=True)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == written
    assert "the operator's own notes" not in (repo / "README.md").read_text()

    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("print('mine')")
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(RepositoryError, match=r"1 file\(s\) export.triton did not write: src/app.py.*nothing was deleted"):
        write_repository(tiny_onnx, repo, overwrite=True)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_overwrite_never_deletes_its_own_input(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    inside = next(repo.glob("*/1/model.onnx"))  # a graph that lives inside the old repository
    before = inside.read_bytes()
    with pytest.raises(RepositoryError, match="an input of this command"):
        write_repository(inside, repo, overwrite=True)
    assert inside.read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "export.triton", "--model", str(inside), "--out", str(repo), "--overwrite"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "an input of this command" in r.stderr and inside.read_bytes() == before


def test_the_manifest_tells_a_changed_repository_file(tiny_onnx, tmp_path):
    from contract.files import ManagedFolder

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    folder = ManagedFolder(repo, "export.triton")
    assert folder.changed() == []
    graph = next(repo.glob(f"{PYTHON_MODEL}/1/model.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    (repo / "README.md").unlink()
    assert folder.changed() == ["README.md is missing", f"{PYTHON_MODEL}/1/model.onnx changed since it was written"]


def test_the_launcher_refuses_a_changed_repository_before_starting(tiny_onnx, tmp_path):
    from contract.errors import BadArtifactError
    from runtime.serve import TritonServer

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    TritonServer(repo).select_models()  # as written: accepted
    graph = next(repo.glob(f"{PYTHON_MODEL}/1/model.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BadArtifactError, match=f"is corrupt: {PYTHON_MODEL}/1/model.onnx changed since it was written"):
        TritonServer(repo).select_models()


def test_the_python_model_refuses_a_file_its_config_does_not_record(tiny_onnx, tmp_path):
    """A valid graph put in place of the served one (and the manifest gone, as if edited by hand): the Python model
    checks the file against the provenance record in its config and refuses it; ONNX Runtime alone would run it."""
    import onnx

    from contract.files import file_sha256
    from contract.provenance import Provenance
    from runtime.serve import ServeError

    swapped = tmp_path / "swapped"
    write_repository(tiny_onnx, swapped, serving=Serving(max_hw=MAX_HW))
    config = parse_config(swapped / PYTHON_MODEL / "config.pbtxt")
    record = Provenance.from_strings({k: v.string_value for k, v in config.parameters.items()})
    assert record.kind == "triton-model" and record.source_sha256 == file_sha256(tiny_onnx)
    assert record.checkpoint_sha256 == Provenance.from_strings(onnx_metadata(tiny_onnx)).checkpoint_sha256
    served = swapped / PYTHON_MODEL / "1" / "model.onnx"
    graph = onnx.load(str(served))
    onnx.helper.set_model_props(graph, {**onnx_metadata(tiny_onnx), "note": "another graph"})
    onnx.save(graph, str(served))  # still a valid graph with a valid payload hash
    (swapped / ".codeenhance-manifest.json").unlink()
    with pytest.raises(ServeError, match=f"model '{PYTHON_MODEL}' failed to load.*different file than its config records"):
        start_server(swapped)


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
