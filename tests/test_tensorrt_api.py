"""Every `tensorrt` name our code uses exists in the real API (TensorRT cannot run here, so this is static).

TensorRT 11 comes from the `tensorrt-cu13-bindings` wheel (in the [dev] extra; its tensorrt.so is read, never
imported), 10.x from the `tensorrt-stubs` wheel, which .ci/run installs with --no-deps into build/tensorrt-stubs
(it pins the full `tensorrt`, and a `tensorrt/` folder in site-packages would make `import tensorrt` succeed).
A name in neither fails; a name only 10.x has must sit under a version gate (or getattr/hasattr).
"""
import os
import shutil
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest

from tests import trt_api

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("export/*.py"), *ROOT.glob("runtime/*.py"), *ROOT.glob("benchmarks/**/*.py")])


def _stub_files() -> list[Path] | None:
    folder = Path(os.environ.get("TRT_STUBS_DIR", ROOT / "build" / "tensorrt-stubs"))
    if not (folder / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        try:
            folder = Path(metadata.distribution("tensorrt-stubs").locate_file(""))
        except metadata.PackageNotFoundError:
            return None
    files = [folder / "tensorrt" / "__init__.pyi", folder / "tensorrt_bindings" / "tensorrt.pyi"]
    return files if all(f.is_file() for f in files) else None


@lru_cache(maxsize=None)
def apis() -> tuple[trt_api.Api, trt_api.Api]:
    stubs = _stub_files()
    if stubs is None:
        pytest.skip('tensorrt-stubs not found: python -m pip install --no-deps --target build/tensorrt-stubs '
                    '"tensorrt-stubs==10.13.0.35.1" (see .ci/run)')
    try:
        dist = metadata.distribution("tensorrt-cu13-bindings")
    except metadata.PackageNotFoundError:
        pytest.skip('tensorrt-cu13-bindings not installed: pip install -e ".[dev]"')
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is needed to read the TensorRT 11 bindings")
    trt10 = trt_api.stubs_api(stubs)
    package = Path(dist.locate_file("tensorrt_bindings"))
    return trt_api.bindings_api(package / "tensorrt.so", package / "__init__.py", trt10.bases), trt10


def test_every_tensorrt_name_exists():
    trt11, trt10 = apis()
    checked, errors = 0, []
    for path in SOURCES:
        found = trt_api.uses(path.read_text(), trt10)
        checked += len(found)
        errors += [f"{path.relative_to(ROOT)} {e}" for e in trt_api.problems(found, trt11, trt10)]
    # 43 when the engine builder moved onto Polygraphy's loaders (60 before: Polygraphy now makes the builder,
    # parser, profile and build calls; what remains is ours: I/O check, timing cache, enums, the runtime backend).
    assert checked >= 40, f"only {checked} tensorrt names found: the collector lost track of the code"
    assert not errors, "\n".join(errors)


def test_checker_catches_bad_names():
    trt11, trt10 = apis()
    snippet = """
import tensorrt as trt
builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
config = builder.create_builder_config()
config.set_flag(trt.BuilderFlag.NOT_A_FLAG)
config.set_flag(trt.BuilderFlag.FP16)
config.set_memory_pool_limt(trt.MemoryPoolType.WORKSPACE, 1)
network = builder.create_network(0)
network.get_input(0).set_dynamic_range(0, 1)
if int(trt.__version__.split(".")[0]) < 11:
    config.set_flag(trt.BuilderFlag.FP16)
flag = getattr(trt.BuilderFlag, "FP16", None)
"""
    errors = trt_api.problems(trt_api.uses(snippet, trt10), trt11, trt10)
    assert errors == [
        "line 5: BuilderFlag.NOT_A_FLAG is in neither TensorRT 11 nor 10.x",
        "line 6: BuilderFlag.FP16 is gone in TensorRT 11: use it under a version gate",
        "line 7: IBuilderConfig.set_memory_pool_limt is in neither TensorRT 11 nor 10.x",
        "line 9: ITensor.set_dynamic_range is gone in TensorRT 11: use it under a version gate",
    ], errors
