"""The layout's promises (issue 13): contract/ at the bottom imports no other package of the project and no torch;
runtime/ never imports export/; an .onnx model runs through runtime.Enhancer without torch or export loaded."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"contract", "codeenhance", "export", "runtime", "benchmarks"}


def imported_top_levels(folder: str, *, module_level_only: bool = False) -> dict[str, set[str]]:
    """file -> the top-level names it imports (absolute imports; relative ones stay inside the package).
    ``module_level_only``: leave out imports inside functions (optional fallbacks imported on use)."""
    found = {}
    for path in sorted((REPO / folder).glob("*.py")):
        names = set()
        tree = ast.parse(path.read_text())
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[path.name] = names
    return found


def test_contract_is_the_bottom():
    for name, imports in imported_top_levels("contract").items():
        assert not imports & (PROJECT_PACKAGES - {"contract"}), f"contract/{name} imports {imports & PROJECT_PACKAGES}"
    for name, imports in imported_top_levels("contract", module_level_only=True).items():
        assert "torch" not in imports, f"contract/{name} imports torch when it is imported"


def test_runtime_never_imports_export():
    for name, imports in imported_top_levels("runtime").items():
        assert "export" not in imports, f"runtime/{name} imports export"


def test_an_onnx_model_runs_without_torch_or_export(tiny_onnx):
    script = f"""
import sys
import numpy as np
from runtime import Enhancer
with Enhancer({str(tiny_onnx)!r}) as enhancer:
    out = enhancer.enhance(np.full((20, 24, 3), 40, np.uint8))
assert out.shape == (20, 24, 3), out.shape
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'export', 'codeenhance'}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_cli_on_an_onnx_model_loads_no_torch(tiny_onnx, tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.full((12, 12, 3), 30, np.uint8))
    script = (f"import sys, runtime.cli as c; rc = c.main([{str(tmp_path / 'a.png')!r}, '-o', {str(tmp_path / 'out')!r}, "
              f"'--model', {str(tiny_onnx)!r}]); print(rc, 'torch' in sys.modules, 'export' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "0 False False", result.stdout + result.stderr
