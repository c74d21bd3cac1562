"""export/tensorrt.py: build plan, engine key, sidecar, trtexec and polygraphy lines, the Polygraphy loaders'
arguments (no TensorRT needed), plus a real tiny build where TensorRT and a GPU exist.

The ONNX files here are made with onnx.helper: the smallest graphs with the contract's I/O
(image [N,3,H,W], w_texture [N], w_style [N] -> enhanced), so the tests do not wait on the exporter.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from export import tensorrt as cli  # noqa: E402
from export.trt_plan import BuildFlags, BuildPlan, ShapeProfile, default_engine_path, engine_key  # noqa: E402
from contract.errors import EXIT_FAILED, EXIT_USAGE  # noqa: E402
from contract.engine_sidecar import GpuInfo, StaleEngineError, check_sidecar, sidecar_path, write_sidecar  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"
TARGET = ["--trt-version", "10.16.0.72", "--gpu-name", H100]  # pin the key: no TensorRT or GPU here


def make_onnx(path: Path, *, names=("image", "w_texture", "w_style"), image_dims=("N", 3, "H", "W"),
              image_type=TensorProto.FLOAT, scale: float = 1.0, half: bool = False) -> Path:
    """enhanced = image * reshape(w_texture * w_style * scale, [-1,1,1,1]); ``scale`` changes the bytes only,
    ``half`` routes the image through FP16 like export/precision.py's Casts."""
    image, texture, style = names
    inputs = [helper.make_tensor_value_info(image, image_type, list(image_dims))]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"]) for name in (texture, style)]
    output = helper.make_tensor_value_info("enhanced", TensorProto.FLOAT, ["N", 3, "H", "W"])
    constants = [helper.make_tensor("per_image", TensorProto.INT64, [4], [-1, 1, 1, 1]),
                 helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    nodes = [
        helper.make_node("Mul", [texture, style], ["w"]),
        helper.make_node("Mul", ["w", "scale"], ["ws"]),
        helper.make_node("Reshape", ["ws", "per_image"], ["w4"]),
        helper.make_node("Cast", [image], ["image_low"], to=TensorProto.FLOAT16 if half else TensorProto.FLOAT),
        helper.make_node("Cast", ["image_low"], ["image32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["image32", "w4"], ["enhanced"]),
    ]
    graph = helper.make_graph(nodes, "contract", inputs, [output], initializer=constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    return make_onnx(tmp_path / "model_fp16.onnx")


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def sidecar_from_dry_run(out: str) -> dict:
    return json.loads(out.split("sidecar content:\n", 1)[1].split("\ntrtexec equivalent:", 1)[0])


# --- dry run and trtexec line through the CLI ---


def test_dry_run_prints_the_profile_and_writes_nothing(model, capsys):
    rc, out, err = run(
        capsys, model, "--dry-run", "--min", "32x48", "--opt", "256", "--max", "512x768",
        "--opt-batch", "2", "--max-batch", "4", *TARGET,
    )
    assert rc == 0, err
    assert "image      min 1x3x32x48  opt 2x3x256x256  max 4x3x512x768" in out
    assert "w_texture  min 1  opt 2  max 4" in out
    assert "w_style    min 1  opt 2  max 4" in out
    assert "inputs    image float32 [N,3,H,W], w_texture float32 [N], w_style float32 [N]" in out
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]  # no engine, sidecar or cache


def test_dry_run_shows_the_sidecar_it_would_write(model, capsys):
    rc, out, _ = run(capsys, model, "--dry-run", "--workspace", "2", "--opt-level", "5", "--timing-cache", model.parent / "t.cache", *TARGET)
    assert rc == 0
    sidecar = sidecar_from_dry_run(out)
    import codeenhance

    assert sidecar["tensorrt_version"] == "10.16.0.72"
    assert sidecar["gpu_name"] == H100
    assert sidecar["precision"] == "fp32"
    assert "compute_capability" in sidecar
    assert sidecar["source_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()  # = sha256sum
    assert sidecar["shapes"]["image"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 512, 512], "max": [1, 3, 1024, 1024]}
    assert sidecar["shapes"]["w_style"] == {"min": [1], "opt": [1], "max": [1]}
    assert sidecar["io"] == {"inputs": ["image", "w_texture", "w_style"], "outputs": ["enhanced"]}
    assert sidecar["build"] == {
        "strongly_typed": True, "workspace_gib": 2.0, "builder_optimization_level": 5,
        "timing_cache": str((model.parent / "t.cache").resolve()),
    }
    assert sidecar["toolkit_version"] == codeenhance.__version__
    assert sidecar["created"]
    engine_line = next(line for line in out.splitlines() if line.strip().startswith("engine "))
    assert sidecar["key"] in engine_line and engine_line.endswith(".plan")
    assert "10.16.0.72" in sidecar["key"] and "NVIDIA-H100-80GB-HBM3" in sidecar["key"]


def test_fp16_graph_is_recorded_as_mixed_precision(tmp_path, capsys):
    rc, out, _ = run(capsys, make_onnx(tmp_path / "half.onnx", half=True), "--dry-run", *TARGET)
    assert rc == 0 and sidecar_from_dry_run(out)["precision"] == "fp16-mixed"
    assert "precision fp16-mixed" in out


def test_trtexec_line_for_10x_has_strong_typing_and_no_fp16(model, capsys):
    rc, out, _ = run(capsys, model, "--print-trtexec", "--out", model.parent / "m.plan", "--timing-cache", model.parent / "t.cache", *TARGET)
    assert rc == 0
    command = next(line for line in out.splitlines() if line.startswith("trtexec "))
    engine, cache = (model.parent / "m.plan").resolve(), (model.parent / "t.cache").resolve()
    assert command.split() == [
        "trtexec", f"--onnx={model.resolve()}", f"--saveEngine={engine}",
        "--minShapes=image:1x3x64x64,w_texture:1,w_style:1",
        "--optShapes=image:1x3x512x512,w_texture:1,w_style:1",
        "--maxShapes=image:1x3x1024x1024,w_texture:1,w_style:1",
        "--memPoolSize=workspace:4096M", "--builderOptimizationLevel=3", f"--timingCacheFile={cache}",
        "--stronglyTyped", "--skipInference",
    ]
    assert "image, w_texture, w_style -> enhanced" in out  # the I/O names the runtime binds


@pytest.mark.parametrize("version, variants, strongly_typed", [("11.4.0", 1, 0), (None, 2, 1)])
def test_trtexec_line_for_11x_or_both(model, capsys, version, variants, strongly_typed):
    if version is None and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed, so its version is known")
    rc, out, _ = run(capsys, model, "--print-trtexec", *(["--trt-version", version] if version else []))
    assert rc == 0
    assert [line.startswith("trtexec ") for line in out.splitlines()].count(True) == variants
    assert out.count("--stronglyTyped") == strongly_typed and "--fp16" not in out
    assert ("# TensorRT 11.x" in out) and (("# TensorRT 10.x" in out) == (variants == 2))


def run_module(*argv) -> subprocess.CompletedProcess:
    """The real entry point: also proves ``export/tensorrt.py`` does not shadow the ``tensorrt`` package."""
    command = [sys.executable, "-m", "export.tensorrt", *map(str, argv)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_dry_run_through_python_dash_m(model):
    proc = run_module(model, "--dry-run", *TARGET)
    assert proc.returncode == 0, proc.stderr
    assert "image      min 1x3x64x64  opt 1x3x512x512  max 1x3x1024x1024" in proc.stdout


def test_without_tensorrt_a_build_says_how_to_install(model):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")
    proc = run_module(model)
    assert proc.returncode == cli.EXIT_NO_TENSORRT
    assert 'pip install "codeenhance-deploy[tensorrt]"' in proc.stderr
    assert "--dry-run" in proc.stderr and "--print-trtexec" in proc.stderr and "Traceback" not in proc.stderr


# --- where the engine goes, and its key ---


@pytest.mark.parametrize(
    "out, expected",
    [
        (None, "{dir}/model_fp16.{key}.plan"),
        ("engines", "{dir}/engines/model_fp16.{key}.plan"),
        ("engines/codeenhance_{key}.engine", "{dir}/engines/codeenhance_{key}.engine"),
        ("prod.plan", "{dir}/prod.plan"),
    ],
)
def test_out_can_be_a_file_a_folder_or_a_key_template(model, capsys, monkeypatch, out, expected):
    monkeypatch.chdir(model.parent)
    rc, stdout, _ = run(capsys, model, "--dry-run", *TARGET, *(["--out", out] if out else []))
    assert rc == 0
    key = sidecar_from_dry_run(stdout)["key"]
    engine_line = next(line for line in stdout.splitlines() if line.strip().startswith("engine "))
    assert engine_line.split(maxsplit=1)[1] == expected.format(dir=model.parent.resolve(), key=key)


def test_key_changes_with_everything_the_engine_depends_on(tmp_path):
    base = dict(profile=ShapeProfile(), trt_version="10.16.0.72", gpu_name=H100, onnx_sha256="ab" * 32)
    key = engine_key(**base)
    assert key == engine_key(**base)  # deterministic
    variants = [
        {"profile": ShapeProfile(max_hw=(2048, 2048))},
        {"profile": ShapeProfile(max_batch=4)},
        {"trt_version": "11.4.0.106"},
        {"gpu_name": "NVIDIA GeForce RTX 4090"},
        {"onnx_sha256": "cd" * 32},
        {"flags": BuildFlags(opt_level=5)},
        {"flags": BuildFlags(workspace_gib=8)},
    ]
    keys = {engine_key(**{**base, **change}) for change in variants}
    assert key not in keys and len(keys) == len(variants)


def test_key_follows_the_onnx_content(tmp_path):
    gpu = GpuInfo(H100, "9.0")
    first = BuildPlan.create(make_onnx(tmp_path / "a.onnx"), trt_version="10.16", gpu=gpu)
    retrained = BuildPlan.create(make_onnx(tmp_path / "a.onnx", scale=2.0), trt_version="10.16", gpu=gpu)
    assert first.key != retrained.key and first.engine_path != retrained.engine_path
    assert default_engine_path(tmp_path / "a.onnx", ShapeProfile(), "10.16", gpu) == retrained.engine_path


# --- errors ---


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--min", "600x600", "--opt", "512x512"], "min <= opt <= max"),
        (["--opt-batch", "8", "--max-batch", "4"], "batch must satisfy min <= opt <= max"),
    ],
)
def test_bad_profile_or_flags_are_refused(model, capsys, argv, message):
    rc, _, err = run(capsys, model, "--dry-run", *TARGET, *argv)
    assert rc == EXIT_USAGE
    assert message in err


@pytest.mark.parametrize("argv, message", [(["--opt-level", "7"], "--opt-level: must be 0..5"),
                                           (["--workspace", "0"], "--workspace: must be within (0, inf)")])
def test_bad_flag_values_are_argument_errors(model, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:  # refused by the flag's type, before any work
        cli.main([str(model), "--dry-run", *TARGET, *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("size, message", [("big", "HxW"), ("0x64", "must be positive")])
def test_bad_size_syntax_is_an_argument_error(model, capsys, size, message):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(model), "--dry-run", "--max", size])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "ONNX file not found"),
        (lambda p: (p.write_bytes(b"\x07not a protobuf at all\xff" * 5), p)[1], "not a valid ONNX model"),
        (lambda p: (p.write_bytes(b""), p)[1], "no inputs"),
        (lambda p: make_onnx(p, names=("input", "w_texture", "w_style")), "missing input(s) image"),
        (lambda p: make_onnx(p, image_dims=("N", 3, "H")), "input image has rank 3, expected 4"),
        (lambda p: make_onnx(p, image_dims=(1, 3, 256, 256)), "fixed size 256 on axis 2"),
        (lambda p: make_onnx(p, image_type=TensorProto.FLOAT16), "input image is float16, expected float32"),
    ],
)
def test_onnx_that_breaks_the_contract_is_refused(tmp_path, capsys, make, message):
    path = make(tmp_path / "bad.onnx")
    rc, _, err = run(capsys, path, "--dry-run", *TARGET)
    assert rc == EXIT_USAGE
    assert message in err
    assert "Traceback" not in err


def test_fixed_size_graph_is_fine_when_the_profile_matches(tmp_path, capsys):
    path = make_onnx(tmp_path / "static.onnx", image_dims=(1, 3, 256, 256))
    rc, _, err = run(capsys, path, "--dry-run", "--min", "256", "--opt", "256", "--max", "256", *TARGET)
    assert rc == 0, err


def test_existing_engine_needs_overwrite(model, capsys):
    engine = model.parent / "model.plan"
    engine.write_bytes(b"old engine")
    rc, _, err = run(capsys, model, "--dry-run", "--out", engine, *TARGET)
    assert rc == EXIT_USAGE and "--overwrite" in err
    rc, _, err = run(capsys, model, "--dry-run", "--out", engine, "--overwrite", *TARGET)
    assert rc == 0, err
    assert engine.read_bytes() == b"old engine"  # a dry run touches nothing
    assert run(capsys, model, "--print-trtexec", "--out", engine, *TARGET)[0] == 0  # trtexec overwrites anyway


# --- sidecar check used by the runtime ---


def test_check_sidecar_accepts_the_same_target_and_names_mismatches(model, tmp_path):
    plan = BuildPlan.create(model, trt_version="10.16.0.72", gpu=GpuInfo(H100, "9.0"), out=tmp_path / "m.plan")
    plan.engine_path.write_bytes(b"engine")
    write_sidecar(plan.engine_path, plan.sidecar())
    assert sidecar_path(plan.engine_path).name == "m.plan.json"

    sidecar = check_sidecar(plan.engine_path, "10.16.0.72", H100, "9.0", onnx_sha256=plan.onnx.sha256)
    assert sidecar["key"] == plan.key
    with pytest.raises(StaleEngineError, match="tensorrt_version is '10.16.0.72' in its record but '11.4.0.106'"):
        check_sidecar(plan.engine_path, "11.4.0.106", H100)
    with pytest.raises(StaleEngineError, match="gpu_name .*compute_capability"):
        check_sidecar(plan.engine_path, "10.16.0.72", "NVIDIA L4", "8.9")
    with pytest.raises(StaleEngineError, match="different ONNX"):
        check_sidecar(plan.engine_path, "10.16.0.72", H100, onnx_sha256="0" * 64)


def test_check_sidecar_without_a_sidecar(tmp_path):
    engine = tmp_path / "trtexec_built.plan"
    engine.write_bytes(b"engine")
    with pytest.raises(StaleEngineError, match="no sidecar"):
        check_sidecar(engine, "10.16.0.72", H100)
    assert check_sidecar(engine, "10.16.0.72", H100, require=False) is None
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(StaleEngineError, match="unreadable"):
        check_sidecar(engine, "10.16.0.72", H100, require=False)


# --- the Polygraphy loaders, built here without TensorRT (constructing a loader calls no TensorRT) ---

TRT_ENUMS = SimpleNamespace(  # the only TensorRT values the loaders' arguments hold: enum members, as tokens
    __version__="10.16.0.72",
    MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
    ProfilingVerbosity=SimpleNamespace(LAYER_NAMES_ONLY="LAYER_NAMES_ONLY"),
)


def accepted_keywords(cls) -> set[str]:
    """Named parameters of ``cls(...)``, following ``**kwargs`` up the classes it is passed to (CreateConfig)."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return names


@pytest.fixture
def polygraphy_trt():
    return pytest.importorskip("polygraphy.backend.trt", reason="pip install polygraphy (in the [dev] extra)")


def test_loader_arguments_exist_in_the_installed_polygraphy(model, polygraphy_trt):
    plan = BuildPlan.create(model, ShapeProfile(max_batch=2), BuildFlags(workspace_gib=2, opt_level=5),
                            trt_version="10.16.0.72", gpu=GpuInfo(H100, "9.0"))
    arguments = cli.loader_arguments(plan, TRT_ENUMS)
    assert set(arguments) == {"NetworkFromOnnxPath", "CreateConfig"}
    for name, kwargs in arguments.items():
        loader = getattr(polygraphy_trt, name)
        unknown = set(kwargs) - accepted_keywords(loader)
        assert not unknown, f"{name} takes no {sorted(unknown)} in polygraphy {polygraphy_trt.__name__}"
        inspect.signature(loader).bind(**kwargs)
    assert arguments["NetworkFromOnnxPath"] == {"path": str(model.resolve()), "strongly_typed": True}
    config = arguments["CreateConfig"]
    assert config["memory_pool_limits"] == {"WORKSPACE": 2 << 30} and config["builder_optimization_level"] == 5
    assert config["tf32"] is True and config["profiling_verbosity"] == "LAYER_NAMES_ONLY"  # trtexec's defaults
    assert "load_timing_cache" not in config  # our own timing-cache rules, see loader_arguments


def test_strong_typing_is_asked_for_on_10x_only(model):
    assert cli.strongly_typed(SimpleNamespace(__version__="10.16.0.72")) is True
    assert cli.strongly_typed(SimpleNamespace(__version__="11.4.0.106")) is False  # always strongly typed there


def test_profile_holds_our_shapes_per_input(polygraphy_trt):
    profile = cli.polygraphy_profile(ShapeProfile((32, 48), (256, 256), (512, 768), 1, 2, 4))
    assert isinstance(profile, polygraphy_trt.Profile) and list(profile) == ["image", "w_texture", "w_style"]
    assert tuple(profile["image"]) == ((1, 3, 32, 48), (2, 3, 256, 256), (4, 3, 512, 768))
    assert tuple(profile["w_texture"]) == tuple(profile["w_style"]) == ((1,), (2,), (4,))


def test_builder_composes_the_real_loaders(model, monkeypatch, polygraphy_trt):
    monkeypatch.setattr(cli, "import_tensorrt", lambda: TRT_ENUMS)  # enum tokens only; nothing is built
    plan = BuildPlan.create(model, trt_version="10.16.0.72", gpu=GpuInfo(H100, "9.0"))
    loader = cli.EngineBuilder(plan).loader()  # a keyword a loader does not take raises TypeError here
    assert isinstance(loader, polygraphy_trt.EngineBytesFromNetwork)


def test_builder_without_tensorrt_or_polygraphy_refuses_cleanly(model, monkeypatch):
    plan = BuildPlan.create(model, trt_version="10.16.0.72", gpu=GpuInfo(H100, "9.0"))
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(cli.TensorRTMissingError, match=r"codeenhance-deploy\[tensorrt\].*--dry-run") as exc:
            cli.EngineBuilder(plan)
        assert exc.value.exit_code == cli.EXIT_NO_TENSORRT == 3
    monkeypatch.setattr(cli, "import_tensorrt", lambda: TRT_ENUMS)
    monkeypatch.setitem(sys.modules, "polygraphy.backend", None)  # as if Polygraphy were not installed
    with pytest.raises(cli.TensorRTMissingError, match="Polygraphy is not installed") as exc:
        cli.EngineBuilder(plan)
    assert exc.value.exit_code == 3


def test_polygraphy_errors_are_collected_and_still_logged(polygraphy_trt, capsys):
    from polygraphy.logger import G_LOGGER

    with cli.polygraphy_errors() as errors:
        G_LOGGER.error("In node 4 with name: /quant/ArgMin and operator: ArgMin: no importer")
        G_LOGGER.error(lambda: "[TRT] Error Code 2: out of memory")
    assert errors == ["In node 4 with name: /quant/ArgMin and operator: ArgMin: no importer",
                      "[TRT] Error Code 2: out of memory"]
    assert "no importer" in capsys.readouterr().out
    assert "error" not in vars(G_LOGGER)  # the logger's own method again


def test_polygraphy_compare_recipe_parses_and_matches_the_build(model, tmp_path, capsys, polygraphy_trt):
    """The dry run's `polygraphy run` line, given to Polygraphy's own CLI with --gen-script (no TensorRT needed)."""
    rc, out, _ = run(capsys, model, "--dry-run", *TARGET, "--workspace", "2")
    assert rc == 0
    command = next(line for line in out.splitlines() if line.startswith("polygraphy run "))
    assert "--strongly-typed" in command and "--fp16" not in command
    script = tmp_path / "compare.py"
    main = "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", main, *shlex.split(command)[1:], "--gen-script", str(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert f"NetworkFromOnnxPath('{model.resolve()}', strongly_typed=True" in text
    assert "memory_pool_limits={trt.MemoryPoolType.WORKSPACE: 2147483648}" in text and "tf32=True" in text
    assert "builder_optimization_level=3" in text
    assert "Profile().add('image', min=[1, 3, 64, 64], opt=[1, 3, 512, 512], max=[1, 3, 1024, 1024])" in text


# --- the build path with stand-ins for Polygraphy's loaders: our control flow around them, not TensorRT ---


def fake_polygraphy(calls: list, *, parse_errors=(), engine=b"serialized engine", cache_fits=True,
                    outputs=("enhanced",), profiles=1) -> SimpleNamespace:
    """Composes like polygraphy.backend.trt (network loader -> PostprocessNetwork's func -> CreateConfig ->
    PostprocessConfig's func -> build) and fails like it (errors to the real G_LOGGER, then PolygraphyException).
    The network and config are records of the few calls our code makes on them. Nothing here is TensorRT."""
    from polygraphy.logger import G_LOGGER

    config = SimpleNamespace(num_optimization_profiles=profiles, cache=None)
    config.create_timing_cache = lambda data: SimpleNamespace(serialize=lambda: bytes(data) + b"+new timings")
    config.set_timing_cache = lambda cache, ignore_mismatch: bool(
        setattr(config, "cache", cache) or cache_fits or cache.serialize() == b"+new timings"
    )
    config.get_timing_cache = lambda: config.cache
    inputs = ("image", "w_texture", "w_style")
    network = SimpleNamespace(num_inputs=3, num_outputs=len(outputs), get_input=lambda i: SimpleNamespace(name=inputs[i]),
                              get_output=lambda i: SimpleNamespace(name=outputs[i]))

    def fail(errors, message):
        for error in errors:
            G_LOGGER.error(error)
        G_LOGGER.critical(message)

    def network_from_onnx_path(**kwargs):
        calls.append(("NetworkFromOnnxPath", kwargs))
        return lambda: fail(parse_errors, "Could not parse ONNX correctly") if parse_errors else ("builder", network, "parser")

    def postprocess_network(load, func, name=None):
        return lambda: (lambda built: func(network=built[1]) or built)(load())

    def create_config(**kwargs):
        calls.append(("CreateConfig", kwargs))
        return lambda builder, net: config

    def postprocess_config(load, func):
        return lambda builder, net: (lambda made: func(builder, net, made) or made)(load(builder, net))

    def engine_bytes_from_network(load_network, config=None):
        def build():
            builder, net, _ = load_network()
            config(builder, net)
            if engine is None:
                fail(["[TRT] Error Code 2: OutOfMemory"], "Invalid Engine. Please ensure the engine was built correctly")
            return engine
        return build

    return SimpleNamespace(NetworkFromOnnxPath=network_from_onnx_path, PostprocessNetwork=postprocess_network,
                           CreateConfig=create_config, PostprocessConfig=postprocess_config,
                           EngineBytesFromNetwork=engine_bytes_from_network)


@pytest.fixture
def fake_build(monkeypatch, polygraphy_trt):
    def install(**kwargs):
        calls = []
        monkeypatch.setattr(cli, "import_tensorrt", lambda: TRT_ENUMS)
        monkeypatch.setattr(cli, "import_polygraphy", lambda: fake_polygraphy(calls, **kwargs))
        monkeypatch.setattr(cli, "detect_gpu", lambda: GpuInfo(H100, "9.0"))
        return calls

    return install


def test_build_writes_engine_sidecar_and_timing_cache(model, tmp_path, capsys, fake_build):
    calls = fake_build()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old timings")
    rc, out, err = run(capsys, model, "--out", tmp_path / "m.plan", "--workspace", "0.5", "--opt-level", "4",
                       "--max-batch", "2", "--timing-cache", cache)
    assert rc == 0, err
    assert (tmp_path / "m.plan").read_bytes() == b"serialized engine"
    assert cache.read_bytes() == b"old timings+new timings"  # read, extended, written back
    sidecar = check_sidecar(tmp_path / "m.plan", "10.16.0.72", H100, "9.0")
    assert sidecar["build"]["builder_optimization_level"] == 4
    assert sidecar["payload_sha256"] == hashlib.sha256(b"serialized engine").hexdigest()  # the integrity record
    kwargs = dict(calls)
    assert kwargs["NetworkFromOnnxPath"]["strongly_typed"] is True
    assert kwargs["CreateConfig"]["builder_optimization_level"] == 4
    assert kwargs["CreateConfig"]["memory_pool_limits"] == {"WORKSPACE": 1 << 29}
    profile = kwargs["CreateConfig"]["profiles"][0]
    assert tuple(profile["image"]) == ((1, 3, 64, 64), (1, 3, 512, 512), (2, 3, 1024, 1024))
    assert tuple(profile["w_texture"]) == tuple(profile["w_style"]) == ((1,), (1,), (2,))
    assert "built " in out


@pytest.mark.parametrize("setup, message", [
    ({"parse_errors": ["In node 4 with name: /quant/ArgMin and operator: ArgMin: no importer"]},
     "ONNX parser rejected model_fp16.onnx:\n  In node 4 with name: /quant/ArgMin and operator: ArgMin: no importer"),
    ({"outputs": ("out",)}, "the parsed network lacks enhanced"),
    ({"profiles": 0}, "rejected the optimization profile"),
    ({"engine": None}, "could not build an engine from model_fp16.onnx:\n  [TRT] Error Code 2: OutOfMemory"),
])
def test_build_failures_are_reported_with_reasons(model, tmp_path, capsys, fake_build, setup, message):
    fake_build(**setup)
    rc, _, err = run(capsys, model, "--out", tmp_path / "m.plan")
    assert rc == EXIT_FAILED and message in err, err
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "m.plan.json").exists()


def test_a_foreign_timing_cache_is_replaced(model, tmp_path, capsys, fake_build):
    fake_build(cache_fits=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    rc, out, err = run(capsys, model, "--out", tmp_path / "m.plan", "--timing-cache", cache)
    assert rc == 0, err
    assert "does not fit" in out and cache.read_bytes() == b"+new timings"


# --- a real build (TensorRT and a GPU only) ---


def require_tensorrt_and_gpu():
    trt = pytest.importorskip("tensorrt", reason="building an engine needs TensorRT (pip install 'codeenhance-deploy[tensorrt]')")
    gpu = cli.detect_gpu()
    if gpu is None:
        pytest.skip("building an engine needs a CUDA GPU")
    return trt, gpu


def build_for_real(capsys, onnx_path: Path, folder: Path, *extra):
    """Build through the CLI; return the engine file, its checked sidecar and the deserialized engine."""
    trt, gpu = require_tensorrt_and_gpu()
    rc, _, err = run(capsys, onnx_path, "--out", folder, "--workspace", "1", *extra)
    assert rc == 0, err
    engine = next(folder.glob("*.plan"))
    sidecar = check_sidecar(engine, trt.__version__, gpu.name, gpu.compute_capability)
    assert sidecar["key"] in engine.name
    loaded = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine.read_bytes())
    assert loaded is not None
    return engine, sidecar, loaded


def test_build_a_tiny_engine_for_real(model, tmp_path, capsys):
    cache = tmp_path / "timing.cache"
    argv = ["--min", "32x32", "--opt", "64x64", "--max", "96x128", "--max-batch", "2", "--timing-cache", cache]
    engine, _, loaded = build_for_real(capsys, model, tmp_path / "engines", *argv)
    assert cache.stat().st_size > 0
    names = {loaded.get_tensor_name(i) for i in range(loaded.num_io_tensors)}
    assert names == {"image", "w_texture", "w_style", "enhanced"}
    assert [tuple(s) for s in loaded.get_tensor_profile_shape("image", 0)] == [(1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 96, 128)]

    rc, _, err = run(capsys, model, "--out", tmp_path / "engines", "--workspace", "1", *argv)  # same key: exists
    assert rc == EXIT_USAGE and "--overwrite" in err
    rc, _, err = run(capsys, model, "--out", tmp_path / "engines", "--workspace", "1", *argv, "--overwrite")
    assert rc == 0, err  # rebuilt, reading the timing cache back


def test_build_the_exported_tiny_codeenhance_for_real(tmp_path, capsys):
    require_tensorrt_and_gpu()  # before the slow checkpoint and export
    export_onnx = pytest.importorskip("export.onnx").export_onnx
    from codeenhance import TINY, save_demo_checkpoint

    checkpoint = save_demo_checkpoint(tmp_path / "tiny.pth", seed=0, config=TINY)
    graph = export_onnx(checkpoint, tmp_path / "tiny.onnx", with_codes=True)
    _, sidecar, loaded = build_for_real(capsys, graph, tmp_path / "engines", "--min", "32", "--opt", "64", "--max", "128")
    names = {loaded.get_tensor_name(i) for i in range(loaded.num_io_tensors)}
    assert {"image", "w_texture", "w_style", "enhanced", "codes"} <= names
    assert sidecar["io"]["outputs"] == ["enhanced", "codes"]
