"""Shared fixtures: paths to ../shared (skipped cleanly when absent) and small checkpoints made on the fly."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CODEENHANCE_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
LOWLIGHT = SHARED / "data" / "lowlight"


def need_triton_server() -> None:
    """Skip unless the serving stack is installed: tritonclient, aiohttp (the launcher's front end) and the Triton
    server binary of nvidia-pytriton."""
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed (the [serve] extra)")
    pytest.importorskip("aiohttp", reason="aiohttp not installed (the [serve] extra): the front end needs it")
    from runtime.serve import ServeError, find_server

    try:
        find_server()
    except ServeError as e:
        pytest.skip(f"no Triton server: {e}")


def default_sigint() -> None:
    """Popen's preexec_fn for the Ctrl-C tests: SIGINT at its default disposition in the child. A shell without job
    control starts background jobs with SIGINT ignored, children inherit that, and Python then installs no
    KeyboardInterrupt handler, so a suite started that way (`pytest ... &`) would send Ctrl-C to processes that
    rightly ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set CODEENHANCE_SHARED to the folder holding golden/ and data/)")
    return path


@pytest.fixture(scope="session")
def golden_ckpt() -> Path:
    return need(GOLDEN / "checkpoint.pth", "golden checkpoint")


@pytest.fixture(scope="session")
def golden_cases():
    import numpy as np

    return dict(np.load(need(GOLDEN / "cases.npz", "golden parity cases")))


@pytest.fixture(scope="session")
def golden_model(golden_ckpt):
    import codeenhance

    return codeenhance.load_model(golden_ckpt)


@pytest.fixture(scope="session")
def lowlight_dir() -> Path:
    return need(LOWLIGHT, "low-light photos (LIME, MEF)")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained checkpoint of the tiny preset (same structure, ~1/40 of the cost)."""
    from codeenhance import TINY, save_demo_checkpoint

    return save_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", seed=0, config=TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    import codeenhance

    return codeenhance.load_model(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny checkpoint exported once per session, with the ``codes`` output."""
    from export.onnx import export_onnx

    return export_onnx(tiny_ckpt, tmp_path_factory.mktemp("onnx") / "tiny.onnx", with_codes=True)
